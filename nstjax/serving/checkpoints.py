"""Parameters and config of a training checkpoint, loaded for inference (no optimizer state)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nstjax import trees
from nstjax.errors import NstjaxError
from nstjax.training.checkpoint import GLOB_CHARACTERS, META_ITEM, STATE_ITEM, quiet_async_failure_noise, check_directory, mismatches, reason, restore_target


BEST_METRIC = "val_loss"  # what the trainer ranks checkpoints by (lower is better)


def best_step(path: Path, steps: list[int], hint: str) -> int:
    """The step with the lowest validation loss recorded in its checkpoint."""
    import json

    scored = []
    for s in steps:
        try:
            meta = json.loads((path / str(s) / META_ITEM / "metadata").read_text())  # nstjax's own metrics
            value = meta["metrics"].get(BEST_METRIC)
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            continue
        if isinstance(value, (int, float)) and np.isfinite(value):
            scored.append((float(value), s))
    if not scored:
        raise NstjaxError(f"step=best: no checkpoint in {path} records {BEST_METRIC}; use step=latest or a number; "
                          f"{hint}")
    return min(scored)[1]


def _unwrap_variables(tree: Any) -> Any:
    """Orbax stores an nnx Variable as {'value': array}; return nnx's "pure dict" form.

    Digit-string keys (nnx.List / Sequential layer indices) become ints again, like
    ``nnx.restore_int_paths``, so the result feeds ``nnx.replace_by_pure_dict``/``nnx.update``.
    """
    if isinstance(tree, Mapping):
        if set(tree) == {"value"} and not isinstance(tree["value"], (Mapping, list)):
            return tree["value"]
        return {
            (int(k) if isinstance(k, str) and k.isdigit() else k): _unwrap_variables(v)
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [_unwrap_variables(v) for v in tree]
    return tree


def load_params_for_inference(
    directory: str | Path,
    step: int | str | None = None,
    *,
    params_key: str = "params",
    template: Any = None,
) -> tuple[Any, dict[str, Any], int]:
    """Load only ``state[params_key]`` and the config from a training checkpoint.

    No optimizer template is needed: the optimizer state is skipped with Orbax's partial
    restore. Without ``template`` the params come back as host numpy arrays in nnx's pure
    dict form (apply with ``nnx.update(model, params)``); with a template (e.g.
    ``nnx.state(abstract_model, nnx.Param)``) they come back in its structure and shardings.
    Returns ``(params, config, step)``.
    """
    path = Path(directory).expanduser().absolute()
    quiet_async_failure_noise()  # a failed read's tensorstore callbacks: one line, not tracebacks
    hint = "check the checkpoint path"
    unreadable_hint = hint
    if any(c in GLOB_CHARACTERS for c in str(path)):  # written before sweeps named folders with ( )
        unreadable_hint = ("a checkpoint saved under a path with [ ] * ? was never finished by Orbax; "
                           "train it again under a path without them")
    check_directory(path, hint)
    if not path.is_dir():
        raise NstjaxError(f"checkpoint directory {path} does not exist; {hint}")
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(STATE_ITEM, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())
    registry.add(META_ITEM, ocp.args.JsonRestore, ocp.JsonCheckpointHandler())
    try:
        mngr = ocp.CheckpointManager(
            path,
            handler_registry=registry,
            options=ocp.CheckpointManagerOptions(save_interval_steps=0, create=False),
        )
    except Exception as e:
        raise NstjaxError(f"cannot read checkpoint directory {path}: {reason(e)}; {hint}") from e
    try:
        steps = sorted(mngr.all_steps())
        if not steps:
            raise NstjaxError(f"no finished checkpoint in {path}; {hint}")
        if step is None or step == "latest":
            step = steps[-1]
        elif step == "best":
            step = best_step(path, steps, hint)
        elif step not in steps:
            raise NstjaxError(f"checkpoint {path} has no step {step} (available: {steps}); {hint}")
        step_dir = path / str(step)
        try:
            metadata = mngr.item_metadata(step)
            stored = metadata[STATE_ITEM] if STATE_ITEM in metadata else None
            tree = getattr(stored, "tree", None)
        except Exception as e:
            raise NstjaxError(f"checkpoint {step_dir} is unreadable: {reason(e)}; {unreadable_hint}") from e
        if tree is None:
            raise NstjaxError(
                f"checkpoint {step_dir} is incomplete or not an nstjax checkpoint "
                f"(no readable 'state' item); {hint}"
            )
        if not isinstance(tree, Mapping) or params_key not in tree:
            raise NstjaxError(f"checkpoint {step_dir} has no '{params_key}' entry; {hint}")
        if template is None:
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree[params_key])
            restore_args = jax.tree.map(
                lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree[params_key]
            )
            restore = ocp.args.PyTreeRestore(
                item={params_key: target},
                restore_args={params_key: restore_args},
                partial_restore=True,
            )
        else:
            problems = mismatches(template, tree[params_key])
            if problems:
                raise NstjaxError(
                    f"checkpoint {step_dir} does not match the model: {trees.summarise(problems)}; {hint}"
                )
            target = {params_key: restore_target(template)}
            restore = ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            )
        try:
            restored = mngr.restore(
                step, args=ocp.args.Composite(**{STATE_ITEM: restore, META_ITEM: ocp.args.JsonRestore()})
            )
            params = restored[STATE_ITEM][params_key]
            config = dict(restored[META_ITEM]["config"])
        except Exception as e:
            raise NstjaxError(f"checkpoint {step_dir} is unreadable: {reason(e)}; {unreadable_hint}") from e
        return (_unwrap_variables(params) if template is None else params), config, int(step)
    finally:
        mngr.close()
