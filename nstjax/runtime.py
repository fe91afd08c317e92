"""Process-wide JAX/XLA settings, applied by the CLIs before the first computation.

* a persistent compilation cache: a rerun at a size seen before loads the executable
  instead of compiling (and, on GPUs, autotuning) it again;
* `gpu_triton_gemm`: whether XLA:GPU autotunes Triton kernels for matrix products (a long
  first compile; worth it for a long training run, not for one Gatys image);
* `host_malloc_cache`: glibc keeps freed memory, so XLA:CPU's per-step scratch buffer is not
  page-faulted back in on every step (faster CPU steps for a higher peak RSS);
* `cpu_dots`: whose matrix products a network's forward pass uses on CPU (nstjax/ops/cpu_kernels.py).
The measured effect of each is in the README's performance section.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nstjax.errors import NstjaxError

if TYPE_CHECKING:
    from nstjax.config import RuntimeConfig

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


# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEEP_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes: never give the top back
# The same settings as glibc environment variables, for processes started from outside Python
# (benchmarks/bench_gatys.py gives them to the PyTorch side).
HOST_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_KEEP_BYTES)}


_retained = False


def host_memory_retained() -> bool:
    """Whether glibc malloc runs with one arena in this process (`retain_host_memory`, or
    `HOST_MALLOC_ENV` given from outside)."""
    return _retained or os.environ.get("MALLOC_ARENA_MAX") == "1"


def retain_host_memory() -> bool:
    """Make glibc malloc reuse freed memory instead of returning it to the OS each time.

    Three mallopt(3) settings, process-wide: one arena (allocations from XLA's worker threads
    would otherwise go to per-thread arenas, which satisfy anything over 64 MB with a fresh
    mmap whatever the other settings), no mmap for large blocks, and no trimming of the heap.
    Call it before JAX starts its CPU backend, so that its threads share the one arena.
    Returns False where it does not apply (not Linux/glibc); `HOST_MALLOC_ENV` gives the same
    settings to a new process through its environment.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    global _retained
    _retained = all(mallopt(param, value) == 1 for param, value in
                    ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_BYTES)))
    return _retained


def configure(runtime: RuntimeConfig | None) -> None:
    """Apply a `runtime` config (conf/runtime/); must run before JAX starts its backends."""
    if runtime is None:
        return
    if runtime.host_malloc_cache:
        retain_host_memory()
    if runtime.gpu_triton_gemm is not None:
        set_gpu_triton_gemm(runtime.gpu_triton_gemm)
    if runtime.compilation_cache:
        enable_compilation_cache(runtime.compilation_cache, runtime.cache_min_compile_seconds)
    from nstjax.ops.cpu_kernels import set_cpu_dots

    set_cpu_dots(runtime.cpu_dots)
