"""Feed-forward stylization networks by name (big_vision style): `model.name` -> network.

Each network has its own config dataclass, stored verbatim in checkpoints and artifacts, so
the export format needs no edit for a new architecture. To add one: write an `nnx.Module`
mapping NHWC images in [0, 1] to the same shape, a config dataclass (with a `name` field and
its own checks in `__post_init__`), a `build(cfg, rngs)` function, and call
`register_network(...)`; then add `conf/model/<name>.yaml`. For `nstjax.export format=onnx`,
also pass `onnx=`: a function of (config, flat float32 params) returning an
`nstjax.ops.onnx_graph.OnnxGraph` (see `johnson_onnx.py`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nstjax.errors import NstjaxError
from nstjax.networks import johnson, johnson_onnx
from nstjax.networks.johnson import JohnsonConfig, TransformerNet

__all__ = ["NETWORKS", "JohnsonConfig", "NetworkSpec", "TransformerNet", "build_network", "count_params",
           "model_config", "parse_dtype", "register_network"]


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    config: type  # dataclass with a `name` field; validates itself in __post_init__
    build: Callable[[Any, nnx.Rngs], nnx.Module]
    size_multiple: int = 1  # the network pads inputs to a multiple of this (exporters need it)
    onnx: Callable[[Any, Mapping[str, Any]], Any] | None = None  # (config, params) -> OnnxGraph; None: no ONNX


#: Registry of feed-forward networks by config `model.name`.
NETWORKS: dict[str, NetworkSpec] = {}


def register_network(name: str, config: type, build: Callable[[Any, nnx.Rngs], nnx.Module],
                     size_multiple: int = 1, onnx: Callable[[Any, Mapping[str, Any]], Any] | None = None) -> None:
    NETWORKS[name] = NetworkSpec(config, build, size_multiple, onnx)


register_network("johnson", JohnsonConfig, johnson.build, johnson.SIZE_MULTIPLE, onnx=johnson_onnx.build_onnx)

_DTYPES: dict[str, jnp.dtype] = {n: jnp.dtype(n) for n in johnson.DTYPES}


def parse_dtype(name: str) -> jnp.dtype:
    """Config dtype string -> jnp dtype, with a one-line error for typos."""
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise NstjaxError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}") from None


def model_config(cfg: Any) -> Any:
    """A model config (dict, DictConfig or config object) -> its network's checked config object."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, Mapping):
        raise NstjaxError(f"model: expected a mapping with a 'name', got {cfg!r}")
    fields = {str(k): v for k, v in cfg.items()}
    name = fields.get("name")
    if name not in NETWORKS:
        raise NstjaxError(f"unknown model.name {name!r}; available: {', '.join(sorted(NETWORKS))}")
    spec = NETWORKS[name]
    known = {f.name for f in dataclasses.fields(spec.config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise NstjaxError(f"model: unknown setting(s) {unknown} for model.name={name}; known: {sorted(known)}")
    return spec.config(**fields)


def build_network(model_cfg: Any, *, rngs: nnx.Rngs) -> nnx.Module:
    """Build the network named by `model_cfg.name`, its params initialized from `rngs`."""
    cfg = model_config(model_cfg)
    build = NETWORKS[cfg.name].build

    # Construct under jit: all initializers become one XLA program instead of one eager
    # compile per kernel shape (values are the same).
    @nnx.jit
    def construct(rngs: nnx.Rngs) -> nnx.Module:
        return build(cfg, rngs)

    return construct(rngs)


def count_params(model: nnx.Module) -> int:
    """Total number of trainable parameter elements."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
