"""The perceptual objective (Gatys et al. 2015; Johnson et al. 2016), one definition for both uses.

`PerceptualLoss` says which VGG-19 layers carry content and style, and how much each loss term
of `nstjax.losses.TERMS` weighs. `Encoder` is the loss network split into a static graph and
traced parameters (weights and precomputed frozen-convolution kernels). The Gatys optimizer
judges the pixels it optimizes against fixed content targets; the trainer judges a network's
output against targets taken from its input photo. Both call `PerceptualLoss.evaluate`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nstjax import losses
from nstjax.errors import NstjaxError
from nstjax.losses import Features
from nstjax.vgg import VGG19, check_layers, frozen_kernels, layer_order

NEURAL_STYLE_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
ALWAYS_REPORTED = ("content", "style", "tv")  # evaluated even at weight 0 (reports, baselines)


class Targets(NamedTuple):
    """What the objective compares against (a pytree, passed to compiled steps as an argument)."""

    content: Features  # features at the content layers
    style: Features  # (blended) Gram matrices at the style layers, and style statistics by term


@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
    """Layers with per-layer weights, and one weight per loss term (defaults: neural-style's)."""

    content_layers: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"relu4_2": 1.0})
    style_layers: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(NEURAL_STYLE_STYLE_LAYERS, 1.0))
    weights: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"content": 5.0, "style": 100.0, "tv": 1e-3})

    def __post_init__(self) -> None:
        check_layers(self.content_layers, "loss.content_layers")
        check_layers(self.style_layers, "loss.style_layers")
        unknown = [k for k in self.weights if k not in losses.TERMS]
        if unknown:
            raise NstjaxError(f"loss: unknown loss term(s) {unknown}; registered: {', '.join(losses.TERMS)}")
        for name, w in self.weights.items():
            if not math.isfinite(float(w)):
                raise NstjaxError(f"loss.{name}_weight: must be a finite number, got {w}")

    @classmethod
    def from_config(cls, cfg: Any) -> PerceptualLoss:
        """From a `loss` config: layer lists, optional per-layer weights, and `<term>_weight`
        for every registered term the config has (so a new term needs one config field)."""
        weights = {}
        for name in losses.TERMS:
            w = getattr(cfg, f"{name}_weight", None)
            if w is not None and (w != 0 or name in ALWAYS_REPORTED):  # a zero extra term costs nothing
                weights[name] = float(w)
        return cls(content_layers=layer_weights(cfg.content_layers, cfg.content_layer_weights,
                                                "loss.content_layer_weights"),
                   style_layers=layer_weights(cfg.style_layers, cfg.style_layer_weights,
                                              "loss.style_layer_weights"),
                   weights=weights)

    # -- layers ------------------------------------------------------------------------
    @property
    def content_names(self) -> tuple[str, ...]:
        return _ordered(self.content_layers)

    @property
    def style_names(self) -> tuple[str, ...]:
        return _ordered(self.style_layers)

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the objective reads, in forward order (one VGG pass computes them all)."""
        return _ordered(set(self.content_layers) | set(self.style_layers))

    # -- targets -----------------------------------------------------------------------
    def content_targets(self, encoder: Encoder, content: np.ndarray | jax.Array) -> Features:
        """Features of one (H, W, 3) content image at the content layers."""
        if not self.content_layers:
            return {}
        return encoder.encode(jnp.asarray(content)[None], self.content_names)

    def style_targets(self, encoder: Encoder, styles: Sequence[np.ndarray | jax.Array],
                      blend: Sequence[float] | None = None) -> Features:
        """Gram matrices of the style image(s) at the style layers, and the style statistic of
        every term in `weights` that has one (of the pixels, `losses.STYLE_STATISTICS`, or of the
        style-layer features, `losses.FEATURE_STATISTICS`), blend-weighted."""
        blend = normalized_blend(blend, len(styles))
        stats = [n for n in self.weights if n in losses.STYLE_STATISTICS]
        feature_stats = [n for n in self.weights if n in losses.FEATURE_STATISTICS]
        grams: dict[str, Any] = {}

        def add(name: str, w: float, value: Any) -> None:  # blend-weighted sum, over pytrees too
            value = jax.tree.map(lambda v: w * jnp.asarray(v), value)
            grams[name] = value if name not in grams else jax.tree.map(jnp.add, grams[name], value)

        for w, style in zip(blend, styles):
            feats = encoder.encode(jnp.asarray(style)[None], self.style_names)
            for k in self.style_names:
                add(k, w, losses.gram(feats[k]))
            for name in stats:  # a weighted mean of quantile functions is the 1D Wasserstein barycentre
                add(name, w, losses.STYLE_STATISTICS[name](np.asarray(style)))
            for name in feature_stats:
                add(name, w, losses.FEATURE_STATISTICS[name](feats))
        return grams

    def reporting(self, *names: str) -> PerceptualLoss:
        """This objective, also reporting the terms `names` (at weight 0 where it has none)."""
        return dataclasses.replace(self, weights={**dict.fromkeys(names, 0.0), **self.weights})

    # -- the objective -----------------------------------------------------------------
    def evaluate(self, image: jax.Array, feats: Features, targets: Targets) -> dict[str, jax.Array]:
        """Unweighted terms (every weighted term, plus content/style/TV always) and the
        weighted `total`. Pure: trace it inside a compiled step."""
        t = losses.TermInputs(image=image, feats=feats, content_targets=targets.content,
                              style_targets=targets.style, content_layers=self.content_layers,
                              style_layers=self.style_layers)
        names = [n for n in losses.TERMS if n in self.weights or n in ALWAYS_REPORTED]
        out = {name: losses.TERMS[name](t) for name in names}
        out["total"] = sum(float(self.weights[n]) * out[n] for n in names if n in self.weights)
        return out


def _ordered(names: Any) -> tuple[str, ...]:
    order = layer_order()
    return tuple(sorted(set(names), key=order.index))


def layer_weights(layers: Any, weights: Any, setting: str) -> dict[str, float]:
    """`[relu1_1, relu2_1]` + optional `[1.0, 0.5]` -> {"relu1_1": 1.0, "relu2_1": 0.5}."""
    names = [str(n) for n in (layers or [])]
    ws = [float(w) for w in (weights or [])] or [1.0] * len(names)
    if len(ws) != len(names):
        raise NstjaxError(f"{setting}: {len(ws)} weights for {len(names)} layers {names}")
    return dict(zip(names, ws))


def normalized_blend(blend: Sequence[float] | None, n: int) -> list[float]:
    if n < 1:
        raise NstjaxError("style.image: at least one style image is needed")
    if blend is None:
        return [1.0 / n] * n
    blend = [float(b) for b in blend]
    if len(blend) != n:
        raise NstjaxError(f"style.blend_weights: {len(blend)} weights for {n} style images")
    if any(b < 0 for b in blend) or sum(blend) <= 0:
        raise NstjaxError("style.blend_weights: weights must be >= 0 with a positive sum")
    return [b / sum(blend) for b in blend]


@partial(jax.jit, static_argnums=(0, 3))
def _encode(graphdef: nnx.GraphDef, params: Any, img: jax.Array, layers: tuple[str, ...]) -> Features:
    state, frozen = params
    return nnx.merge(graphdef, state)(img, layers, frozen)


class Encoder:
    """VGG-19 as a loss network: a static graph plus `params` (weights and frozen kernels).

    `params` is an explicit argument of every compiled step (weights are not baked in as
    constants); `__call__(params, img, layers)` is pure. `input_shape` (batch, height, width)
    lets the frozen kernels take the fastest layout for that image size.
    """

    def __init__(self, vgg: VGG19, layers: Sequence[str], input_shape: tuple[int, int, int] | None = None):
        self.graphdef, state = nnx.split(vgg)
        # Once per loss network, not per step: Winograd / input-gradient kernels.
        self.params = (state, frozen_kernels(vgg, layers, input_shape=input_shape))

    def __call__(self, params: Any, img: jax.Array, layers: Sequence[str]) -> Features:
        state, frozen = params
        return nnx.merge(self.graphdef, state)(img, tuple(layers), frozen)

    def encode(self, img: jax.Array, layers: Sequence[str]) -> Features:
        """Compiled features of `img` with this encoder's own params (for targets)."""
        return _encode(self.graphdef, self.params, img, tuple(layers))
