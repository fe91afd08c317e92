"""Reflect-pad an NHWC batch to a multiple of a size, and crop the result back."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Crop(NamedTuple):
    top: int
    left: int
    height: int
    width: int

    def __call__(self, y: Any) -> Any:
        return y[:, self.top : self.top + self.height, self.left : self.left + self.width, :]


def pad_to_multiple(x: Any, multiple: int, xp: Any = np) -> tuple[Any, Crop]:
    """Reflect-pad H and W of `x` up to a multiple, the extra split between both borders.

    `xp` is numpy or jax.numpy (same call); the returned `Crop` removes exactly what was added.
    Reflection keeps the strip image-like, so instance-norm statistics barely move.
    """
    _, h, w, _ = x.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    if ph or pw:
        # "reflect" also handles pads wider than the image (it reflects repeatedly).
        x = xp.pad(x, ((0, 0), (top, ph - top), (left, pw - left), (0, 0)), mode="reflect")
    return x, Crop(top, left, h, w)


def padded_size(n: int, multiple: int) -> int:
    return n + (-n) % multiple
