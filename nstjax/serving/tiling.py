"""Images larger than memory (or than a network should see at once): overlapping tiles,
blended with feathered weights, every tile the same shape so one executable serves them all."""
from __future__ import annotations

from typing import Any

import numpy as np

from nstjax.errors import NstjaxError


def tile_starts(n: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, n) with tiles of `tile`, the last one flush with the end."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def feather(h: int, w: int, overlap: int) -> np.ndarray:
    """(h, w, 1) weights rising linearly over `overlap` px from each edge (never zero)."""
    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        r = np.minimum(i + 1, n - i) / float(max(overlap, 1))
        return np.clip(r, 1.0 / (overlap + 1), 1.0)

    return (ramp(h)[:, None] * ramp(w)[None, :])[..., None]


def stylize_tiled(stylizer: Any, image: np.ndarray, *, tile: int, overlap: int, batch: int = 4) -> np.ndarray:
    """`stylizer` over (H, W, 3) `image` in tiles of `tile` px overlapping by `overlap` px.

    Tiles are batched `batch` at a time; a short last batch repeats its last tile, so every
    call has one shape and compiles once. Memory beyond the image: two (H, W) accumulators.
    """
    if overlap < 0 or tile <= 2 * overlap:
        raise NstjaxError(f"tile={tile}, overlap={overlap}: need tile > 2 * overlap >= 0")
    h, w = image.shape[:2]
    th, tw = min(tile, h), min(tile, w)
    boxes = [(y, x) for y in tile_starts(h, th, th - overlap) for x in tile_starts(w, tw, tw - overlap)]
    weight = feather(th, tw, overlap)
    acc = np.zeros((h, w, 3), np.float32)
    total = np.zeros((h, w, 1), np.float32)
    for i in range(0, len(boxes), batch):
        group = boxes[i : i + batch]
        tiles = np.stack([image[y : y + th, x : x + tw] for y, x in group])
        if len(group) < batch and len(boxes) > 1:
            tiles = np.concatenate([tiles, np.repeat(tiles[-1:], batch - len(group), axis=0)])
        out = np.clip(stylizer(tiles), 0.0, 1.0)
        for (y, x), t in zip(group, out):
            acc[y : y + th, x : x + tw] += t * weight
            total[y : y + th, x : x + tw] += weight
    return acc / total
