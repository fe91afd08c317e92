"""Process-wide JAX/XLA settings, applied by the CLIs before the first computation.

Two settings matter for wall time rather than step time:

* A persistent compilation cache. XLA compiles one program per image size; on a GPU that
  includes autotuning every convolution (tens of seconds). With the cache, re-running at a
  size seen before loads the executable from disk instead.
* ``gpu_triton_gemm``: XLA:GPU autotunes Triton kernels for matrix products. For the Gram
  matrices of Gatys that autotuning cost 23 s of a 28 s compile on an H100 and bought
  nothing (2.38 vs 2.49 ms/step at 512 px with cuBLAS instead), so stylize turns it off.
  Training keeps it: there it is 6.7 vs 8.7 ms/step in bfloat16, which a 40k-step run
  repays many times (README, GPU tables).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from nstjax.errors import NstjaxError

TRITON_GEMM_FLAG = "--xla_gpu_enable_triton_gemm"


def set_gpu_triton_gemm(enabled: bool) -> None:
    """Add the flag to XLA_FLAGS unless the user already chose; must run before JAX starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    if TRITON_GEMM_FLAG in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} {TRITON_GEMM_FLAG}={'true' if enabled else 'false'}".strip()


def enable_compilation_cache(path: str | os.PathLike[str], min_compile_seconds: float = 1.0) -> Path:
    """Keep compiled executables that took at least `min_compile_seconds` in `path`."""
    import jax

    p = Path(os.path.expanduser(str(path)))
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NstjaxError(f"runtime.compilation_cache {str(path)!r}: cannot create it ({e.strerror})") from None
    jax.config.update("jax_compilation_cache_dir", str(p))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return p


def configure(runtime: Mapping[str, Any] | None) -> None:
    """Apply a config's ``runtime`` block (see conf/stylize.yaml and conf/train.yaml)."""
    runtime = runtime or {}
    if runtime.get("gpu_triton_gemm") is not None:
        set_gpu_triton_gemm(bool(runtime["gpu_triton_gemm"]))
    if runtime.get("compilation_cache"):
        enable_compilation_cache(runtime["compilation_cache"], runtime.get("cache_min_compile_seconds", 1.0))
