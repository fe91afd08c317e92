"""`tile=auto`: the tile size from a memory budget, by the compiled network's own memory use.

The network's memory for an input shape is what XLA's buffer assignment reserves for the
compiled executable (`compiled.memory_analysis()`: temporaries, arguments and outputs), read
without running it. Two small probe shapes, at the batch that will run, give a line,
bytes = fixed + per_pixel * pixels of one image (the parameters and their transforms are fixed,
every activation scales with the pixels). The largest tile the line allows is then compiled and
checked against the budget, a step smaller each time it does not fit.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

from nstjax.errors import NstjaxError

BUDGET_ENV = "NSTJAX_MEMORY_BUDGET"  # MB, when memory_budget is not set
DEFAULT_FRACTION = 0.5  # of the available memory, when neither is set
TILE_STEP = 16  # tile sides are multiples of this
_PROBES = (128, 256)  # probe sides for the line, at the batch that will run
_MAX_CHECKS = 6  # compiles to find a tile under the budget after the line's guess

MB = 2**20


def available_bytes() -> int:
    """Memory available to new allocations: MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        raise NstjaxError(f"memory_budget: cannot tell the available memory here; set memory_budget=MB "
                          f"(or {BUDGET_ENV})") from None


def budget_bytes(memory_budget_mb: float | None) -> int:
    """The budget in bytes: `memory_budget` (MB), else $NSTJAX_MEMORY_BUDGET (MB), else
    DEFAULT_FRACTION of the available memory."""
    if memory_budget_mb is not None:
        return int(memory_budget_mb * MB)
    env = os.environ.get(BUDGET_ENV)
    if env:
        try:
            mb = float(env)
        except ValueError:
            mb = float("nan")
        if not mb > 0:
            raise NstjaxError(f"{BUDGET_ENV}: expected a positive number of MB, got {env!r}")
        return int(mb * MB)
    return int(DEFAULT_FRACTION * available_bytes())


def network_bytes(stylizer: Any, shape: tuple[int, ...], keep: bool = True) -> int:
    """Bytes the compiled network reserves for a (B, H, W, 3) input: temporaries + arguments
    (parameters, input) + outputs, from XLA's memory analysis (compiles, does not run; `keep`
    caches the executable for running)."""
    analysis = getattr(stylizer, "memory_analysis", None)
    if analysis is None:
        raise NstjaxError(f"tile=auto: the {getattr(stylizer, 'backend', '?')} backend does not report its "
                          "memory use; pass a tile size (tile=512)")
    m = analysis(shape, keep=keep)
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)


_LINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def memory_line(stylizer: Any, batch: int = 1) -> tuple[float, float]:
    """(fixed bytes, bytes per pixel of one image) of the network at `batch`, from two probe
    compiles; once per stylizer and batch (a batch need not cost `batch` times one image: on CPU
    the images of a batch run one at a time)."""
    lines = _LINES.setdefault(stylizer, {})
    if batch not in lines:
        (p0, b0), (p1, b1) = [(t * t, network_bytes(stylizer, (batch, t, t, 3), keep=False)) for t in _PROBES]
        per_pixel = max(1.0, (b1 - b0) / (p1 - p0))
        lines[batch] = (b0 - per_pixel * p0, per_pixel)
    return lines[batch]


@dataclass(frozen=True)
class TilePlan:
    tile: int | None  # None: the whole image fits
    bytes: int  # the network's memory for the shape that will run
    budget: int


def plan_tiles(stylizer: Any, height: int, width: int, *, batch: int, overlap: int, budget: int) -> TilePlan:
    """The whole image at batch 1 if it fits the budget, else the largest square tile (sides
    multiples of TILE_STEP, > 2 * overlap) whose batch of `batch` tiles fits; one line if even
    the smallest tile does not."""
    def shape(t: int | None) -> tuple[int, int, int, int]:
        if t is None:
            return (1, height, width, 3)
        return (batch, min(t, height), min(t, width), 3)

    def predicted(t: int | None) -> float:
        n, h, w, _ = shape(t)
        f, per_pixel = memory_line(stylizer, n)
        return f + per_pixel * h * w

    fixed = memory_line(stylizer, batch)[0]

    smallest = TILE_STEP * (2 * overlap // TILE_STEP + 1)  # the first multiple above 2 * overlap
    if predicted(None) <= budget:
        need = network_bytes(stylizer, shape(None))
        if need <= budget:
            return TilePlan(None, need, budget)
    largest = -(-max(height, width) // TILE_STEP) * TILE_STEP
    fits = [t for t in range(smallest, largest + 1, TILE_STEP) if predicted(t) <= budget]
    t = fits[-1] if fits else smallest
    for _ in range(_MAX_CHECKS):
        need = network_bytes(stylizer, shape(t))
        if need <= budget:
            return TilePlan(t, need, budget)
        if t == smallest:
            break
        # Shrink by the measured overshoot of the part that grows with the pixels (at least one step).
        scale = ((budget - fixed) / max(1.0, need - fixed)) ** 0.5 if budget > fixed else 0.0
        t = max(smallest, min(t - TILE_STEP, int(t * scale) // TILE_STEP * TILE_STEP))
    raise NstjaxError(
        f"memory_budget: {budget / MB:.0f} MB is too small for even a minimal tile ({smallest}x{smallest} px, "
        f"batch {batch}, overlap {overlap}: the network needs {need / MB:.0f} MB); raise memory_budget "
        f"(or {BUDGET_ENV}), or lower batch or overlap")
