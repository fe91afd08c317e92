"""Feed-forward stylization networks by name (big_vision style): `model.name` -> network.

Each network has its own config dataclass, stored verbatim in checkpoints and artifacts, so
the export format needs no edit for a new architecture. To add one: write an `nnx.Module`
mapping NHWC images in [0, 1] to the same shape, a config dataclass (with a `name` field and
its own checks in `__post_init__`), a `build(cfg, rngs)` function, and call
`register_network(...)`; then add `conf/model/<name>.yaml`. For `nstjax.export format=onnx`,
also pass `onnx=`: a function of (config, flat float32 params) returning an
`nstjax.ops.onnx_graph.OnnxGraph` (see `johnson_onnx.py`). A network of several styles
(`num_styles` > 1 in its config) takes `(images, style_weights)` and passes `select_style=`:
(config, flat params, weights) -> a single-style (config, params), which every server and
exporter then handles as any other network. A network conditioned on style *images* (AdaIN,
`adain.py`) passes `conditions=` (model, config, style images) -> its per-style inputs for training,
and `fix_image_style=` (config, params, images, weights) -> a single-style (config, params);
one that embeds VGG layers passes `from_loss_network=` (model, VGG19) to start from its weights.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nstjax.errors import NstjaxError
from nstjax.networks import adain, johnson, johnson_onnx
from nstjax.networks.adain import AdainConfig, AdainNet
from nstjax.networks.johnson import JohnsonConfig, TransformerNet

__all__ = ["NETWORKS", "AdainConfig", "AdainNet", "JohnsonConfig", "NetworkSpec", "TransformerNet", "build_network", "count_params",
           "fix_style", "model_config", "needs_style", "num_styles", "parse_dtype", "register_network", "style_weights"]


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    config: type  # dataclass with a `name` field; validates itself in __post_init__
    build: Callable[[Any, nnx.Rngs], nnx.Module]
    size_multiple: int = 1  # the network pads inputs to a multiple of this (exporters need it)
    onnx: Callable[[Any, Mapping[str, Any]], Any] | None = None  # (config, params) -> OnnxGraph; None: no ONNX
    select_style: Callable[[Any, Mapping[str, Any], np.ndarray], tuple[Any, dict[str, Any]]] | None = None
    conditions: Callable[[nnx.Module, Any, list[np.ndarray]], np.ndarray] | None = None  # per-style inputs
    fix_image_style: Callable[..., tuple[Any, dict[str, Any]]] | None = None  # (cfg, params, images, weights)
    from_loss_network: Callable[[nnx.Module, Any], None] | None = None  # (model, VGG19): copy its weights in

    @property
    def any_style(self) -> bool:
        """Whether the network takes its style as an image (it stylizes with any painting)."""
        return self.conditions is not None


#: Registry of feed-forward networks by config `model.name`.
NETWORKS: dict[str, NetworkSpec] = {}


def register_network(name: str, config: type, build: Callable[[Any, nnx.Rngs], nnx.Module],
                     size_multiple: int = 1, onnx: Callable[[Any, Mapping[str, Any]], Any] | None = None,
                     select_style: Callable[..., tuple[Any, dict[str, Any]]] | None = None,
                     **image_style: Any) -> None:
    """`image_style`: `conditions`, `fix_image_style`, `from_loss_network` (see `NetworkSpec`)."""
    NETWORKS[name] = NetworkSpec(config, build, size_multiple, onnx, select_style, **image_style)


register_network("johnson", JohnsonConfig, johnson.build, johnson.SIZE_MULTIPLE, onnx=johnson_onnx.build_onnx,
                 select_style=johnson.select_style)
register_network("adain", AdainConfig, adain.build, adain.SIZE_MULTIPLE, conditions=adain.conditions,
                 fix_image_style=adain.fix_style, from_loss_network=adain.from_loss_network)

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


def num_styles(cfg: Any) -> int:
    """How many styles a network's config says it draws (1 unless it is a multi-style network)."""
    return int(getattr(model_config(cfg), "num_styles", 1))


def style_weights(cfg: Any, choice: Any, setting: str = "model_style") -> np.ndarray:
    """`model_style=` of a multi-style network -> (num_styles,) weights summing to 1.

    `choice`: a style's name or index, or a mapping of names/indices to weights (a mix, e.g.
    {candy: 0.7, mosaic: 0.3})."""
    cfg = model_config(cfg)
    n, names = num_styles(cfg), list(getattr(cfg, "style_names", None) or [])
    listing = ", ".join(f"{i}={s}" for i, s in enumerate(names)) or f"indices 0..{n - 1}"

    def index(key: Any) -> int:
        k = str(key).strip()
        if k in names:
            return names.index(k)
        if k.lstrip("-").isdigit() and 0 <= int(k) < n:
            return int(k)
        raise NstjaxError(f"{setting}={key!r}: the network's styles are {listing}")

    w = np.zeros(n, np.float32)
    if isinstance(choice, Mapping):
        for key, value in choice.items():
            try:
                w[index(key)] += float(value)
            except (TypeError, ValueError):
                raise NstjaxError(f"{setting}: the weight of {key!r} must be a number, got {value!r}") from None
        if (w < 0).any() or not w.sum() > 0:
            raise NstjaxError(f"{setting}: weights must be >= 0 with a positive sum, got {dict(choice)}")
        return w / w.sum()
    w[index(choice)] = 1.0
    return w


def needs_style(cfg: Any) -> bool:
    """Whether serving the network needs `model_style=`: several styles, or any style image."""
    cfg = model_config(cfg)
    return num_styles(cfg) > 1 or (NETWORKS[cfg.name].any_style and not getattr(cfg, "fixed_style", False))


def _mix(choice: Any, setting: str) -> dict[str, float]:
    """`model_style=` of an any-style network: a path, or {path: weight} -> {path: weight summing to 1}."""
    mix = {str(k): v for k, v in choice.items()} if isinstance(choice, Mapping) else {str(choice): 1.0}
    try:
        mix = {k: float(v) for k, v in mix.items()}
    except (TypeError, ValueError):
        raise NstjaxError(f"{setting}: each style image's weight must be a number, got {dict(choice)}") from None
    if not mix or any(v < 0 for v in mix.values()) or not sum(mix.values()) > 0:
        raise NstjaxError(f"{setting}: weights must be >= 0 with a positive sum, got {mix}")
    return {k: v / sum(mix.values()) for k, v in mix.items()}


def fix_style(model: Mapping[str, Any], params: Mapping[str, Any], choice: Any, where: str,
              load_style: Callable[[str], np.ndarray] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(model config, flat params) of a network fixed to the style `choice`, and a record of
    what was chosen. A multi-style network takes a name, an index or a mix (`style_weights`);
    an any-style network a style image path or a mix {path: weight}, read by `load_style`. A
    single-style network is returned as is, and then `choice` must be None."""
    cfg = model_config(model)
    spec = NETWORKS[cfg.name]
    if not needs_style(cfg):
        if choice is not None:
            raise NstjaxError(f"model_style={choice!r}: {where} draws a single style")
        return dict(model), dict(params), None
    if spec.any_style:
        if choice is None:
            raise NstjaxError(f"{where} stylizes with any style image; choose one with model_style=PATH "
                              "(or a mix, model_style={PATH: W, ...})")
        if load_style is None:
            raise NstjaxError(f"{where}: model_style images need a reader (load_style=)")
        mix = _mix(choice, "model_style")
        fixed, out = spec.fix_image_style(cfg, params, [load_style(p) for p in mix], np.asarray(list(mix.values())))
        return dataclasses.asdict(fixed), out, {k: round(v, 6) for k, v in mix.items()}
    n = num_styles(cfg)
    names = getattr(cfg, "style_names", None) or [str(i) for i in range(n)]
    if choice is None:
        raise NstjaxError(f"{where} draws {n} styles; choose one with model_style=NAME|INDEX "
                          f"(or a mix, model_style={{NAME: W, ...}}): {', '.join(names)}")
    w = style_weights(cfg, choice)
    fixed, out = spec.select_style(cfg, params, w)
    record = {names[i]: round(float(w[i]), 6) for i in np.flatnonzero(w)}
    return dataclasses.asdict(fixed), out, record
