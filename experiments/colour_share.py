"""How much of each image is saturated colour, by hue: the style's rare bright panes, counted.

    python experiments/colour_share.py style.jpg photo.jpg out_a.jpg out_b.jpg [--size 512]

One row per image: the share of pixels that are saturated (HSV saturation and value above the
thresholds), the share still saturated after a median filter (`--median` px: coherent patches
such as panes survive it, one-pixel colour fringes along edges do not), then the first share
split by hue into red, yellow, green, cyan, blue and magenta.
The palette loss matches a colour distribution as a whole; this shows whether its rare tails
(mosaic's blue, pink and red panes) made it into an output.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HUES = ("red", "yellow", "green", "cyan", "blue", "magenta")


def saturated(rgb: np.ndarray, min_saturation: float, min_value: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> (mask of saturated pixels, hue in [0, 1))."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), np.float32) / 255.0
    return (hsv[..., 1] > min_saturation) & (hsv[..., 2] > min_value), hsv[..., 0]


def colour_share(rgb: np.ndarray, min_saturation: float, min_value: float, median: int) -> dict[str, float]:
    """(H, W, 3) uint8 -> the saturated share of pixels, in coherent patches, and per hue sextant."""
    bright, h = saturated(rgb, min_saturation, min_value)
    smooth = np.asarray(Image.fromarray(rgb).filter(ImageFilter.MedianFilter(median)))
    sextant = np.floor((h * 6 + 0.5) % 6).astype(int)  # red centred on hue 0
    out = {"saturated": float(bright.mean()), "patches": float(saturated(smooth, min_saturation, min_value)[0].mean())}
    for i, name in enumerate(HUES):
        out[name] = float((bright & (sextant == i)).mean())
    return out


def load(path: Path, size: int | None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size:
            scale = size / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        return np.asarray(im)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--size", type=int, default=512, help="long side to resize to first (0: as is)")
    p.add_argument("--min-saturation", type=float, default=0.5)
    p.add_argument("--min-value", type=float, default=0.25)
    p.add_argument("--median", type=int, default=5, help="median filter size (odd) for the patches column")
    a = p.parse_args()
    for path in a.images:
        if not path.is_file():
            p.error(f"{path}: no such image")
    print(f"| image | saturated | in patches | {' | '.join(HUES)} |")
    print("|---|---|---|" + "---|" * len(HUES))
    for path in a.images:
        share = colour_share(load(path, a.size), a.min_saturation, a.min_value, a.median)
        cells = " | ".join(f"{100 * share[k]:.1f}%" for k in HUES)
        print(f"| {path.name} | {100 * share['saturated']:.1f}% | {100 * share['patches']:.1f}% | {cells} |")


if __name__ == "__main__":
    main()
