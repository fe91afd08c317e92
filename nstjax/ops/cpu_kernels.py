"""Which XLA:CPU kernels the networks' forward pass is compiled with, on this CPU.

This jaxlib hands CPU convolutions, matrix products and reductions to YNNPACK by default. The
forward formulations of `nstjax/ops/padded_conv.py` run faster with XLA's own convolutions and
YNNPACK's reductions on every CPU measured. Whose matrix products are faster (they carry the
Winograd convolutions of the residual blocks and the upsampling) depends on the machine and
on how it runs: XLA's kernels were faster on the AMD EPYC the formulations were tuned on; on a
2-core Intel Xeon the two tie with XLA's default thread pool, while with more XLA threads than
cores (`NPROC=8`, as the test suite runs) and the single malloc arena of
`runtime.host_malloc_cache`, XLA's products slow down and YNNPACK's do not (README, "Inference on
CPU"). Both give the network's output to float rounding.

`runtime.cpu_dots=auto` (the default) settles it once per CPU model, XLA thread count, jaxlib
and host malloc mode by timing the residual blocks' convolution both ways (under a second), and
keeps the answer in `$NSTJAX_CACHE/cpu_kernels.json`; `xla` or `ynnpack` choose without measuring.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

#: The XLA:CPU option that says which operations YNNPACK runs.
FLAG = "xla_cpu_experimental_ynn_fusion_type"
#: Compile options per choice of matrix-product kernels; convolutions stay XLA's in both.
OPTIONS: dict[str, dict[str, str]] = {
    "xla": {FLAG: "LIBRARY_FUSION_TYPE_REDUCE"},
    "ynnpack": {FLAG: "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
}
CHOICES = ("auto", *OPTIONS)
_MARGIN = 0.9  # YNNPACK's products must be 10% faster to replace XLA's (the first measured default)

_choice = "auto"


def set_cpu_dots(choice: str) -> None:
    """`runtime.cpu_dots`: auto, xla or ynnpack (checked by the config schema)."""
    global _choice
    if choice not in CHOICES:
        raise ValueError(f"cpu_dots must be one of {CHOICES}, got {choice!r}")
    _choice = choice
    forward_options.cache_clear()


def machine_key() -> str:
    """What the answer depends on: the CPU model, its cores, XLA's thread count, the jaxlib and
    the host malloc mode."""
    import jaxlib

    from nstjax.runtime import host_memory_retained

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    malloc = "malloc retained" if host_memory_retained() else "malloc default"
    # NPROC sizes XLA:CPU's thread pool; more threads than cores slowed XLA's products, not YNNPACK's
    threads = os.environ.get("NPROC") or os.cpu_count()
    return f"{model} | {os.cpu_count()} cores | {threads} XLA threads | jaxlib {jaxlib.__version__} | {malloc}"


def measure(rounds: int = 5, calls: int = 3) -> dict[str, float]:
    """Median ms of the residual blocks' Winograd convolution (64x64, 128 channels) per choice."""
    import jax
    import numpy as np

    from nstjax.ops import winograd

    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((1, 66, 66, 128), dtype=np.float32))
    w = jax.device_put((0.05 * rng.standard_normal((3, 3, 128, 128))).astype(np.float32))
    lowered = jax.jit(winograd.conv3x3_valid).lower(x, w)
    exes = {name: lowered.compile(options) for name, options in OPTIONS.items()}
    times: dict[str, list[float]] = {name: [] for name in exes}
    for exe in exes.values():
        jax.block_until_ready(exe(x, w))
    for _ in range(rounds):  # alternating, so drift on a shared machine hits both alike
        for name, exe in exes.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(exe(x, w))
            times[name].append(1e3 * (time.perf_counter() - t0) / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _cache_file() -> Path:
    from nstjax.assets import cache_dir

    return cache_dir() / "cpu_kernels.json"


def _measured_choice() -> str:
    path, key = _cache_file(), machine_key()
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("dots") in OPTIONS:
        return entry["dots"]
    ms = measure()
    dots = "ynnpack" if ms["ynnpack"] < _MARGIN * ms["xla"] else "xla"
    known[key] = {"dots": dots, "ms": {k: round(v, 3) for k, v in ms.items()}}
    try:
        from nstjax.atomic import write_json_atomic

        write_json_atomic(known, path)
    except OSError:  # a read-only cache: measure again next time
        pass
    return dots


@functools.cache
def forward_options() -> dict[str, Any]:
    """Compile options for a network's forward pass on the CPU backend."""
    return dict(OPTIONS[_measured_choice() if _choice == "auto" else _choice])
