"""Pytrees as flat `a/b/0/kernel` names, and one report of how two such trees differ.

Checkpoints, artifacts and exported functions all name parameters this way, so a mismatch
is reported the same way wherever it is found.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

MAX_LISTED = 3  # how many differences an error line names before summarising


def key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten(tree: Any, *, drop_variable_value: bool = False) -> dict[str, Any]:
    """Leaves keyed by 'a/b/0/kernel'. `drop_variable_value` drops an nnx.Variable's own
    trailing 'value' attribute, giving the names of `nnx.to_pure_dict`."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out: dict[str, Any] = {}
    for path, leaf in leaves:
        parts = [key_str(k) for k in path]
        if drop_variable_value and parts and parts[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
            parts = parts[:-1]
        out["/".join(parts)] = leaf
    return out


def _is_prng_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def stored_shape(leaf: Any) -> tuple[int, ...]:
    """Shape as written to disk: typed PRNG keys are stored as their raw uint32 key data."""
    if _is_prng_key(leaf):
        return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    shape = getattr(leaf, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(leaf))


def _describe(leaf: Any, with_dtype: bool) -> str:
    shape = stored_shape(leaf)
    return f"{np.dtype(leaf.dtype).name}{list(shape)}" if with_dtype else str(shape)


def mismatches(want: Mapping[str, Any], have: Mapping[str, Any], *, have_name: str = "the checkpoint",
               want_name: str = "the model", check_dtype: bool = False) -> list[str]:
    """Differences between flat name -> array-like maps, shallow paths first (so a line names
    'params/conv/kernel' before the optimizer's copies of it)."""
    found: list[tuple[str, str]] = []
    for p, w in want.items():
        if p not in have:
            found.append((p, f"'{p}' is missing from {have_name}"))
            continue
        h = have[p]
        if getattr(h, "shape", None) is None:
            continue
        differs = tuple(h.shape) != stored_shape(w)
        if check_dtype and not differs:
            differs = np.dtype(h.dtype) != np.dtype(w.dtype)
        if differs:
            found.append((p, f"'{p}' is {_describe(h, check_dtype)} in {have_name} but {want_name} expects "
                             f"{_describe(w, check_dtype)}"))
    found += [(p, f"{have_name} has '{p}', which {want_name} lacks") for p in have if p not in want]
    found.sort(key=lambda item: item[0].count("/"))
    return [message for _, message in found]


def summarise(problems: list[str]) -> str:
    text = "; ".join(problems[:MAX_LISTED])
    if len(problems) > MAX_LISTED:
        text += f" (and {len(problems) - MAX_LISTED} more)"
    return text
