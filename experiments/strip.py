"""Images side by side at one height, each with a caption underneath: figures for the README.

    python experiments/strip.py out.jpg photo.jpg "photo" net.jpg "network" gatys.jpg "Gatys" [--height 384]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

CAPTION_PX = 22  # caption band under each image
GAP_PX = 4


def strip(pairs: list[tuple[Path, str]], height: int) -> Image.Image:
    tiles = []
    for path, _ in pairs:
        with Image.open(path) as im:
            im = im.convert("RGB")
            tiles.append(im.resize((round(im.width * height / im.height), height), Image.LANCZOS))
    width = sum(t.width for t in tiles) + GAP_PX * (len(tiles) - 1)
    out = Image.new("RGB", (width, height + CAPTION_PX), "white")
    draw, x = ImageDraw.Draw(out), 0
    for tile, (_, caption) in zip(tiles, pairs):
        out.paste(tile, (x, 0))
        draw.text((x + 4, height + 5), caption, fill="black")
        x += tile.width + GAP_PX
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path)
    p.add_argument("items", nargs="+", help="image caption image caption ...")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--quality", type=int, default=88)
    a = p.parse_args()
    if len(a.items) % 2:
        p.error("expected pairs of image and caption")
    pairs = [(Path(a.items[i]), a.items[i + 1]) for i in range(0, len(a.items), 2)]
    for path, _ in pairs:
        if not path.is_file():
            p.error(f"{path}: no such image")
    strip(pairs, a.height).save(a.output, quality=a.quality, optimize=True)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
