"""Training checkpoints for the feed-forward trainer, on top of Orbax.

One checkpoint is one step directory ``<ckpt_dir>/<step>/`` holding two items:

* ``state``: the pytree of arrays (params, optimizer state, step, RNG key), written with
  ``StandardSave`` so sharded ``jax.Array``s are stored per shard and restored onto the
  shardings of the caller's template.
* ``meta``: JSON with the data-iterator position, the resolved config and the metrics, so a
  resumed run continues from the same batch with the same settings.

Atomicity: Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` only after every item has been fully written (``AtomicRenameTemporaryPath``; the
rename is the commit point). Orbax lists only names without the tmp suffix as steps, so a
crash mid-save leaves a tmp directory that is never restored; the next :class:`Checkpointer`
opened on the directory deletes such leftovers.

Retention: the last ``keep_last`` checkpoints plus the best one by ``best_metric`` (lower is
better by default) are kept; the best-metric value is stored in Orbax's own ``metrics`` item,
so the best checkpoint is still protected after a resume.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from nstjax import trees
from nstjax.errors import NstjaxError

__all__ = ["Checkpointer", "Restored"]

log = logging.getLogger(__name__)

STATE_ITEM = "state"
META_ITEM = "meta"
FORMAT_VERSION = 1
# Never suggests deleting anything: a user's checkpoints are the most expensive files here.
RESUME_HINT = "point train.ckpt_dir at another directory to start a new run beside this one"


class UnreadableCheckpoint(NstjaxError):
    """One step's checkpoint cannot be read (corrupt, truncated, incomplete)."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a resumed run needs: the state on the template's shardings plus bookkeeping."""

    step: int
    state: Any
    data_state: Any
    config: dict[str, Any]
    metrics: dict[str, Any]
    run_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. the W&B run id


# --------------------------------------------------------------------------------------
# Small helpers


_OS_ERRORS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied")


def reason(e: BaseException) -> str:
    """First line of an exception, short enough for a one-line CLI error; an operating-system
    cause buried in a storage library's message (ENOSPC, ...) is named as such."""
    for known in _OS_ERRORS:
        if known in str(e):
            return known
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    line = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _to_json(value: Any, where: str) -> Any:
    """Convert numpy/jax scalars and tuples to plain JSON types; reject anything else early.

    Orbax's JSON writer runs in a background thread, so a bad value would otherwise only
    surface later, far from the call that caused it.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint {where}: keys must be strings, got {k!r}")
            out[k] = _to_json(v, f"{where}.{k}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.size(value) == 1:
        return np.asarray(value).item()
    raise TypeError(f"checkpoint {where}: {type(value).__name__} is not JSON-serializable")


def _encode_data_state(data_state: Any) -> dict[str, Any]:
    """Tag the iterator state's type so bytes/str/dict come back exactly as given."""
    if isinstance(data_state, bytes):
        return {"kind": "bytes", "value": base64.b64encode(data_state).decode("ascii")}
    if isinstance(data_state, str):
        return {"kind": "str", "value": data_state}
    return {"kind": "json", "value": _to_json(data_state, "data_state")}


def _decode_data_state(blob: Any) -> Any:
    if not isinstance(blob, Mapping) or "kind" not in blob:
        raise ValueError("meta.data_state is malformed")
    if blob["kind"] == "bytes":
        return base64.b64decode(blob["value"])
    return blob["value"]


def mismatches(template: Any, stored_tree: Any) -> list[str]:
    """Differences between the template and the checkpoint's array metadata, by tree path."""
    return trees.mismatches(trees.flatten(template), trees.flatten(stored_tree))


def restore_target(template: Any) -> Any:
    """Turn a template into restore targets that carry an explicit sharding.

    jax Arrays keep their sharding; sharding-less ShapeDtypeStructs get the default device.
    Without one, Orbax falls back to version-dependent behaviour (numpy arrays, or the
    sharding saved on disk, which breaks when resuming on other devices). numpy arrays and
    Python scalars are restored as such.
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(leaf: Any) -> Any:
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf if leaf.sharding is not None else jax.ShapeDtypeStruct(
                leaf.shape, leaf.dtype, sharding=default
            )
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        return leaf

    return jax.tree.map(one, template)


# Orbax finds a step's per-process OCDBT files with a glob over the whole path, so under a
# directory whose name holds a glob character it skips the final merge without an error and
# the step it commits cannot be read back.
GLOB_CHARACTERS = "[]*?"


def check_directory(path: Path, hint: str) -> None:
    if path.exists() and not path.is_dir():
        raise NstjaxError(f"checkpoint directory {path} is a file, not a directory; {hint}")


def check_writable_name(path: Path) -> None:
    bad = sorted({c for c in str(path) if c in GLOB_CHARACTERS})
    if bad:
        raise NstjaxError(
            f"checkpoint directory {path} has {' '.join(repr(c) for c in bad)} in its path, under which "
            "Orbax writes checkpoints it cannot read back; set train.ckpt_dir to a path without [ ] * ?")


class _DropAsyncNoise(logging.Filter):
    """Orbax and tensorstore log a failed asynchronous write as tracebacks from their threads;
    the Checkpointer reports the same failure as one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        return not any(k in record.pathname or k in text for k in ("orbax", "tensorstore", "Future exception"))


_QUIETED = False


def quiet_async_failure_noise() -> None:
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_DropAsyncNoise())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        # tensorstore callbacks of a failed save fire on Orbax's already closed event loop.
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        previous(unraisable)

    sys.unraisablehook = hook


# --------------------------------------------------------------------------------------
# Checkpointer


class Checkpointer:
    """Periodic, asynchronous, atomic checkpoints of a training run.

    Use as a context manager (or call :meth:`close`) so the last asynchronous save is
    flushed before the process exits.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        save_every: int,
        keep_last: int = 3,
        keep_best: bool = True,
        best_metric: str = "loss",
        best_mode: str = "min",
        async_save: bool = True,
        discard_existing: bool = False,
    ) -> None:
        if save_every < 0:
            raise NstjaxError(f"train.save_every must be >= 0 (0 = only at the end), got {save_every}")
        if keep_last < 1:
            raise NstjaxError(f"train.keep_last must be >= 1, got {keep_last}")
        if best_mode not in ("min", "max"):
            raise NstjaxError(f"best-checkpoint mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = Path(directory).expanduser().absolute()
        self.save_every = save_every
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._warned_no_metric = False
        self._closed = False
        self._pending: int | None = None  # the step of the asynchronous save in flight
        quiet_async_failure_noise()
        check_directory(self.directory, RESUME_HINT)
        check_writable_name(self.directory)

        worst = math.inf if best_mode == "min" else -math.inf

        def rank(metrics: Mapping[str, float]) -> float:
            value = metrics.get(best_metric)
            return worst if value is None else float(value)

        policies: list[ocm.PreservationPolicy] = [ocm.LatestN(n=keep_last)]
        if keep_best:
            # BestN keeps the *last* n after sorting; reverse=True sorts descending so the
            # lowest values end up last (same convention as Orbax's best_mode='min').
            policies.append(
                ocm.BestN(
                    get_metric_fn=rank,
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn makes Orbax persist the ranking metric and reload it on resume.
            best_fn=rank if keep_best else None,
            best_mode=best_mode,
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            # Unused: save() decides via should_save() and always passes force=True, because
            # Orbax's default policy would also save the very first step it sees.
            save_interval_steps=1,
            # Leftover tmp dirs are removed synchronously below: Orbax's own cleanup runs in
            # a thread that close() does not join, and that a quick exit turns into a traceback.
            cleanup_tmp_directories=False,
            enable_async_checkpointing=async_save,
            create=True,
        )
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state_handler = ocp.StandardCheckpointHandler()
        registry.add(STATE_ITEM, ocp.args.StandardSave, state_handler)
        registry.add(STATE_ITEM, ocp.args.StandardRestore, state_handler)
        meta_handler = ocp.JsonCheckpointHandler()
        registry.add(META_ITEM, ocp.args.JsonSave, meta_handler)
        registry.add(META_ITEM, ocp.args.JsonRestore, meta_handler)
        try:
            self._remove_unfinished_saves()
            self._mngr = ocp.CheckpointManager(
                self.directory, handler_registry=registry, options=options
            )
        except Exception as e:  # unreadable dir, bad metrics file, permissions, ...
            raise NstjaxError(
                f"cannot open checkpoint directory {self.directory}: {reason(e)}; {RESUME_HINT}"
            ) from e
        if discard_existing:
            self._discard_existing()

    def _remove_unfinished_saves(self) -> None:
        """Delete ``<step>.orbax-checkpoint-tmp*`` dirs left by a crash mid-save.

        They are never restored anyway (see the module docstring); this only frees the disk.
        Assumes one writer per directory, like the rest of this class.
        """
        if not self.directory.is_dir() or jax.process_index() != 0:  # one process cleans up
            return
        for tmp in ocp.path.step.all_temporary_paths(self.directory):
            log.info("removing unfinished checkpoint %s", tmp.get())
            shutil.rmtree(Path(tmp.get()))

    def _discard_existing(self) -> None:
        """Delete an earlier run's checkpoints when starting over (train.resume=false).

        Left in place they would collide with the new run: save() skips steps that already
        exist, retention would prefer the old run's higher steps, and a later resume would
        pick them up.
        """
        steps = self.all_steps()
        if not steps:
            return
        log.warning(
            "starting over: deleting %d existing checkpoint(s) in %s (steps %s..%s)",
            len(steps), self.directory, steps[0], steps[-1],
        )
        try:
            for step in steps:
                self._mngr.delete(step)
        except Exception as e:
            raise NstjaxError(
                f"cannot delete old checkpoints in {self.directory}: {reason(e)}; "
                "point train.ckpt_dir at another directory"
            ) from e

    # -- queries -----------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def best_step(self) -> int | None:
        return self._mngr.best_step() if self.keep_best else None

    def should_save(self, step: int) -> bool:
        """True on every ``save_every``-th step that has not been saved yet."""
        if self.save_every <= 0 or step <= 0 or step % self.save_every:
            return False
        return step not in self._mngr.all_steps()

    # -- saving ------------------------------------------------------------------------

    def _ranking_metrics(self, metrics: Mapping[str, Any]) -> dict[str, float] | None:
        """The value Orbax ranks by; {} (ranked worst) if it is missing or not finite.

        {} rather than None: Orbax warns on every metric-less save when best_fn is set.
        """
        if not self.keep_best:
            return None
        if self.best_metric not in metrics:
            if not self._warned_no_metric:
                log.warning(
                    "checkpoint metrics have no %r; such steps never count as the best",
                    self.best_metric,
                )
                self._warned_no_metric = True
            return {}
        value = float(np.asarray(metrics[self.best_metric]))
        return {self.best_metric: value} if math.isfinite(value) else {}

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: Any,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        force: bool = False,
        run_info: Mapping[str, Any] | None = None,
    ) -> bool:
        """Start saving ``step``; returns False if skipped (not due, or already saved).

        Returns once the arrays are copied off the device, so the caller may donate or
        overwrite ``state``; the write itself finishes in the background (see :meth:`wait`).
        ``force=True`` saves regardless of ``save_every`` (end of training, SIGTERM).
        """
        if not force and not self.should_save(step):
            return False
        if step in self._mngr.all_steps():
            return False
        self.wait()  # Orbax waits here anyway; a failed earlier save is reported as that step
        meta = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "data_state": _encode_data_state(data_state),
            "config": _to_json(dict(config), "config"),
            "metrics": _to_json(dict(metrics), "metrics"),
            "run_info": _to_json(dict(run_info or {}), "run_info"),
        }
        args = ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}
        )
        try:
            saved = bool(
                self._mngr.save(step, args=args, metrics=self._ranking_metrics(metrics), force=True)
            )
        except Exception as e:
            raise self._write_error(step, e) from e
        self._pending = step
        return saved

    def _write_error(self, step: int | None, e: BaseException) -> NstjaxError:
        what = f"checkpoint step {step}" if step is not None else "checkpoint"
        return NstjaxError(f"could not write {what} to {self.directory}: {reason(e)}; the checkpoints before "
                           "it are intact: fix that, then run the same command to resume from them")

    def check(self) -> None:
        """Raise now if the last asynchronous save failed (cheap, does not wait for it)."""
        try:
            self._mngr.check_for_errors()
        except Exception as e:
            raise self._write_error(self._pending, e) from e

    def wait(self) -> None:
        """Block until the pending asynchronous save (and old-step deletion) is on disk."""
        try:
            self._mngr.wait_until_finished()
        except Exception as e:
            raise self._write_error(self._pending, e) from e
        self._pending = None

    def close(self) -> None:
        """Flush pending saves and stop Orbax's background threads; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._mngr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- restoring ---------------------------------------------------------------------

    def restore_latest(self, template_state: Any,
                       check_config: Callable[[dict[str, Any], int], None] | None = None) -> Restored | None:
        """Restore the newest readable checkpoint, or return None if there is none.

        ``template_state`` (a ShapeDtypeStruct tree, e.g. from ``jax.eval_shape``, or a
        concrete state) fixes the structure, dtypes and shardings of the result.
        ``check_config(config, step)`` sees the checkpoint's config before any array is
        compared or read (so a changed setting is reported as such, not as a shape mismatch).
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None
        unreadable: list[str] = []
        for step in steps:  # newest first; a corrupt one falls back to the one before it
            try:
                return self.restore(step, template_state, check_config)
            except UnreadableCheckpoint as e:
                unreadable.append(f"{self.directory / str(step)}: {e.why}")
                log.warning("checkpoint step %d (%s): %s; trying the one before it", step,
                            self.directory / str(step), e.why)
        raise NstjaxError(f"cannot resume: no readable checkpoint ("
                          f"{trees.summarise(unreadable)}); {RESUME_HINT}")

    def restore(self, step: int, template_state: Any,
                check_config: Callable[[dict[str, Any], int], None] | None = None) -> Restored:
        """Restore a given step; any problem becomes one NstjaxError line naming the dir."""
        self.wait()  # a step saved asynchronously is listed before its directory exists
        step_dir = self.directory / str(step)

        def fail(why: str, cause: BaseException | None = None) -> NstjaxError:
            err = UnreadableCheckpoint(f"cannot resume from checkpoint {step_dir}: {why}; {RESUME_HINT}")
            err.why = why
            err.__cause__ = cause
            return err

        if check_config is not None:
            try:
                meta = self._mngr.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
                config = dict(meta[META_ITEM]["config"])
            except Exception as e:
                raise fail(f"unreadable ({reason(e)})", e) from e
            check_config(config, step)

        try:
            metadata = self._mngr.item_metadata(step)
            stored = metadata[STATE_ITEM] if STATE_ITEM in metadata else None
        except Exception as e:
            raise fail(f"unreadable ({reason(e)})", e) from e
        if stored is None or getattr(stored, "tree", None) is None:
            raise fail("it is incomplete or not an nstjax checkpoint (no readable 'state' item)")
        problems = mismatches(template_state, stored.tree)
        if problems:  # not corrupt: every step of this run would differ the same way
            raise NstjaxError(f"cannot resume from checkpoint {step_dir}: it does not match the current model: "
                              f"{trees.summarise(problems)}; {RESUME_HINT}")
        args = ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardRestore(restore_target(template_state)),
                META_ITEM: ocp.args.JsonRestore(),
            }
        )
        try:
            restored = self._mngr.restore(step, args=args)
            meta = restored[META_ITEM]
            if not isinstance(meta, Mapping) or meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"unsupported meta format {meta.get('format') if isinstance(meta, Mapping) else meta!r}")
            data_state = _decode_data_state(meta["data_state"])
            return Restored(
                step=int(step),
                state=restored[STATE_ITEM],
                data_state=data_state,
                config=dict(meta["config"]),
                metrics=dict(meta["metrics"]),
                run_info=dict(meta.get("run_info") or {}),  # absent in older checkpoints
            )
        except Exception as e:
            raise fail(f"unreadable ({reason(e)})", e) from e
