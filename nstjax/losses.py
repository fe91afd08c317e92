"""Perceptual losses as small pure functions of VGG features (and of the image, for TV).

Conventions (those of jcjohnson/neural-style): features come from Caffe-preprocessed images
(0..255 scale), every loss is a mean, and Gram matrices are normalized by C*H*W. Means keep
the weights meaningful across resolutions, which the coarse-to-fine pyramid relies on.

The perceptual objective (`nstjax.perceptual.PerceptualLoss`) is a weighted sum of the terms
registered in `TERMS`. To add a loss: write a pure function of `TermInputs` here, decorate it
with `@term("name")`, and give it a weight (`loss.<name>_weight` in `nstjax.config.LossConfig`).
Gatys and training then both use it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

Features = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TermInputs:
    """What a loss term may look at: the judged image, its features and the targets."""

    image: jax.Array  # (B, H, W, 3) in [0, 1]: the optimized image or the network's output
    feats: Features  # its VGG features at every layer the objective uses
    content_targets: Features  # target features at the content layers
    style_grams: Features  # target Gram matrices at the style layers
    content_layers: Mapping[str, float]  # layer -> weight
    style_layers: Mapping[str, float]


Term = Callable[[TermInputs], jax.Array]
#: Loss terms by name, in the order they are reported; the objective weights each by name.
TERMS: dict[str, Term] = {}


def term(name: str) -> Callable[[Term], Term]:
    """Register a pure loss term under `name` (its weight is then `weights[name]`)."""

    def register(fn: Term) -> Term:
        TERMS[name] = fn
        return fn

    return register


@jax.custom_vjp
def gram(f: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C, C) Gram matrices normalized by C*H*W (computed in float32).

    The gradient is written out (dF = F (dG + dG^T) / CHW, one (HW x C) @ (C x C) product)
    because XLA:CPU lays autodiff's version out as a slow transposed (C x HW) product.
    """
    return _gram(f)


def _gram(f: jax.Array) -> jax.Array:
    b, h, w, c = f.shape
    x = f.reshape(b, h * w, c).astype(jnp.float32)
    return jnp.einsum("bnc,bnd->bcd", x, x, precision=jax.lax.Precision.HIGHEST) / (c * h * w)


def _gram_fwd(f: jax.Array):
    return _gram(f), f


def _gram_bwd(f: jax.Array, g: jax.Array):
    b, h, w, c = f.shape
    sym = (g + jnp.swapaxes(g, 1, 2)) / (c * h * w)
    x = f.reshape(b, h * w, c).astype(jnp.float32)
    df = jnp.einsum("bnd,bdc->bnc", x, sym, precision=jax.lax.Precision.HIGHEST)
    return (df.reshape(f.shape).astype(f.dtype),)


gram.defvjp(_gram_fwd, _gram_bwd)


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a - b))


def content_loss(feats: Features, targets: Features, weights: Mapping[str, float]) -> jax.Array:
    """Sum over layers of w_l * mean((F_l - T_l)^2)."""
    return sum(w * mse(feats[k], targets[k]) for k, w in weights.items())


def style_loss(feats: Features, target_grams: Features, weights: Mapping[str, float]) -> jax.Array:
    """Sum over layers of w_l * mean((G(F_l) - G_target_l)^2); target grams broadcast over batch."""
    return sum(w * mse(gram(feats[k]), target_grams[k]) for k, w in weights.items())


def tv_loss(rgb01: jax.Array) -> jax.Array:
    """Squared total variation of the image on the 0..255 scale: mean(dy^2) + mean(dx^2)."""
    y = rgb01 * 255.0
    dy = y[:, 1:, :, :] - y[:, :-1, :, :]
    dx = y[:, :, 1:, :] - y[:, :, :-1, :]
    return jnp.mean(jnp.square(dy)) + jnp.mean(jnp.square(dx))


# --------------------------------------------------------------------------- registered terms


@term("content")
def content_term(t: TermInputs) -> jax.Array:
    if not t.content_layers:
        return jnp.zeros((), jnp.float32)
    return content_loss(t.feats, t.content_targets, t.content_layers)


@term("style")
def style_term(t: TermInputs) -> jax.Array:
    if not t.style_layers:
        return jnp.zeros((), jnp.float32)
    return style_loss(t.feats, t.style_grams, t.style_layers)


@term("tv")
def tv_term(t: TermInputs) -> jax.Array:
    return tv_loss(t.image)
