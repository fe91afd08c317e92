"""Process-wide runtime settings: glibc keeps freed memory for the next step (no page faults)."""
import os
import platform
import subprocess
import sys

import pytest

# Allocate, touch and free a 200 MB block six times from a new thread (as XLA:CPU allocates a
# step's scratch buffer from a worker thread), printing the page faults of each round.
PROBE = """
import ctypes, resource, sys, threading
from nstjax.runtime import retain_host_memory
if sys.argv[1] == "retain":
    assert retain_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n, faults = 200 << 20, []
def rounds():
    for _ in range(6):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
t = threading.Thread(target=rounds)
t.start(); t.join()
print(*faults)
"""


def _faults(mode: str, env: dict[str, str] | None = None) -> list[int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=None if env is None else {**os.environ, **env})
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_retain_host_memory_stops_refaulting_large_blocks():
    pages = (200 << 20) // 4096
    default = _faults("default")
    assert all(f > pages // 2 for f in default), default  # every round maps fresh pages
    retained = _faults("retain")
    assert retained[0] > pages // 2, retained             # the first round still touches new memory
    assert all(f < pages // 100 for f in retained[1:]), retained  # then it is reused as it is


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_host_malloc_env_has_the_same_effect():
    from nstjax.runtime import HOST_MALLOC_ENV

    pages = (200 << 20) // 4096
    retained = _faults("default", HOST_MALLOC_ENV)  # no mallopt call: the environment alone
    assert retained[0] > pages // 2, retained
    assert all(f < pages // 100 for f in retained[1:]), retained


def test_configure_applies_host_malloc_cache_only_when_asked(monkeypatch):
    from nstjax import runtime
    from nstjax.config import RuntimeConfig

    calls = []
    monkeypatch.setattr(runtime, "retain_host_memory", lambda: calls.append(1) or True)
    runtime.configure(RuntimeConfig(host_malloc_cache=False, cache_min_compile_seconds=1.0))
    assert calls == []
    runtime.configure(RuntimeConfig(host_malloc_cache=True, cache_min_compile_seconds=1.0))
    assert calls == [1]
