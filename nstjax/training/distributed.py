"""Multi-process training on JAX's own distributed runtime (SLURM, Kubernetes, TPU pods, ...).

`initialize` starts `jax.distributed` from the config or from the cluster's environment; then
`jax.devices()` spans every process, the mesh is global, each process reads its own share of
the data, Orbax writes checkpoints collectively, and only process 0 logs and writes files.
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from nstjax.errors import NstjaxError

if TYPE_CHECKING:
    from nstjax.config import DistributedConfig

log = logging.getLogger(__name__)

# Environment variables that say "this process is one of several" (JAX auto-detects the rest).
_CLUSTER_HINTS = ("JAX_COORDINATOR_ADDRESS", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE",
                  "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _cluster_detected() -> bool:
    if os.environ.get("SLURM_STEP_NUM_TASKS", "1") not in ("", "1"):
        return True
    if os.environ.get("OMPI_COMM_WORLD_SIZE", "1") not in ("", "1"):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or "," in hosts


def initialize(cfg: DistributedConfig) -> bool:
    """Start jax.distributed when asked (`distributed.enabled=true`, or `auto` on a detected
    multi-process cluster). Must run before JAX touches a device. Returns whether it did."""
    import jax

    wanted = cfg.enabled == "true" or (cfg.enabled == "auto" and (cfg.coordinator_address or _cluster_detected()))
    if not wanted:
        return False
    # Only used by CPU devices; asking which backend runs would start it, which must come after.
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    kwargs: dict[str, Any] = {}
    for key in ("coordinator_address", "num_processes", "process_id", "local_device_ids"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=cfg.timeout_seconds)
    except Exception as e:  # unreachable coordinator, missing settings, ...
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NstjaxError(f"distributed: cannot start JAX's distributed runtime ({detail}); set "
                          "distributed.coordinator_address, num_processes and process_id, or run under a "
                          "cluster JAX detects (SLURM, Open MPI, TPU pods)") from None
    log.warning("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())
    return True


def is_primary() -> bool:
    import jax

    return jax.process_index() == 0


def allgather_json(obj: Any) -> list[Any]:
    """Every process's `obj` (JSON-able), in process order (e.g. each one's data position)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return [obj]
    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    buf = np.zeros(int(lengths.max()), np.uint8)
    buf[: raw.size] = raw
    every = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(lengths), -1)
    return [json.loads(bytes(every[i, : lengths[i]])) for i in range(len(lengths))]


def any_process(flag: bool) -> bool:
    """True on every process if it is True on any (e.g. one of them received SIGTERM)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return flag
    return bool(np.asarray(multihost_utils.process_allgather(np.array([int(flag)], np.int32))).max())


def pack_data_state(state: Any) -> Any:
    """The data position to checkpoint: this process's, or every process's in a multi-process run."""
    import jax

    return state if jax.process_count() == 1 else {"processes": allgather_json(state)}


def unpack_data_state(stored: Any) -> Any | None:
    """This process's data position from a checkpoint, or None (with a warning) when the
    checkpoint was written by a different number of processes."""
    import jax

    n = jax.process_count()
    per = stored.get("processes") if isinstance(stored, dict) and "processes" in stored else [stored]
    if len(per) != n:
        log.warning("the checkpoint's data position is from %d process(es), this run has %d: the model and "
                    "optimizer resume exactly, the data stream starts a new pass", len(per), n)
        return None
    return per[jax.process_index()]
