"""Put images side by side at one height, each with a caption, for README figures.

    python experiments/strip.py out.jpg a.jpg "net_size=256" b.jpg "net_size=512" c.jpg "none" [--height 341]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw


def strip(images: list[Image.Image], captions: list[str], height: int) -> Image.Image:
    scaled = [im.convert("RGB").resize((round(im.width * height / im.height), height), Image.Resampling.LANCZOS)
              for im in images]
    bar = 18  # caption strip under each image
    out = Image.new("RGB", (sum(im.width for im in scaled) + 4 * (len(scaled) - 1), height + bar), "white")
    draw = ImageDraw.Draw(out)
    x = 0
    for im, caption in zip(scaled, captions):
        out.paste(im, (x, 0))
        draw.text((x + 4, height + 3), caption, fill="black")
        x += im.width + 4
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("pairs", nargs="+", help="image caption image caption ...")
    ap.add_argument("--height", type=int, default=341)
    args = ap.parse_args()
    if len(args.pairs) % 2:
        raise SystemExit("strip.py: give image/caption pairs")
    paths, captions = args.pairs[::2], args.pairs[1::2]
    for p in paths:
        if not Path(p).is_file():
            raise SystemExit(f"strip.py: {p} is not a file")
    strip([Image.open(p) for p in paths], captions, args.height).save(args.out, quality=88)


if __name__ == "__main__":
    main()
