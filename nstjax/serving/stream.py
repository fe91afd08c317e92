"""Batched, shape-cached running of a Stylizer over a stream of frames, timed."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RunStats:
    images: int = 0
    seconds: float = 0.0  # network time after compilation (host<->device copies included)
    shapes: set = field(default_factory=set)
    tiles: dict = field(default_factory=dict)  # tile=auto: image size -> the tile chosen, its memory, the budget

    @property
    def ms_per_image(self) -> float:
        return 1e3 * self.seconds / self.images if self.images else float("nan")


def stylize_stream(
    stylizer: Any,
    items: Iterable[tuple[Any, np.ndarray]],
    *,
    batch: int,
    stats: RunStats,
) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """(key, content) pairs -> (key, content, stylized) in input order, in batches of ``batch``.

    Consecutive same-shape items form a batch. A partial batch (the end of an animation) is
    padded with copies of its last image when that shape already has a full-batch executable,
    so all frames of a clip share one compile; a lone image runs at its own batch size.
    """
    pending: list[tuple[Any, np.ndarray]] = []

    def flush() -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        n = len(pending)
        x = np.stack([img for _, img in pending])
        full = (batch, *x.shape[1:])
        if n < batch and stylizer.is_compiled(full):  # reuse the full-batch executable
            x = np.concatenate([x, np.repeat(x[-1:], batch - n, axis=0)])
        stylizer.compile(x.shape)  # outside the timed region
        stats.shapes.add(x.shape)
        t0 = time.perf_counter()
        y = stylizer(x)
        stats.seconds += time.perf_counter() - t0
        stats.images += n
        out = [(key, img, y[i]) for i, (key, img) in enumerate(pending)]
        pending.clear()
        yield from out

    for key, img in items:
        if pending and (img.shape != pending[0][1].shape or len(pending) == batch):
            yield from flush()
        pending.append((key, img))
    if pending:
        yield from flush()
