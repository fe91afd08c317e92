"""Perceptual losses as small pure functions of VGG features (and of the image, for TV).

Conventions (those of jcjohnson/neural-style): features come from Caffe-preprocessed images
(0..255 scale), every loss is a mean, and Gram matrices are normalized by C*H*W. Means keep
the weights meaningful across resolutions, which the coarse-to-fine pyramid relies on.

The perceptual objective (`nstjax.perceptual.PerceptualLoss`) is a weighted sum of the terms
registered in `TERMS`. To add a loss: write a pure function of `TermInputs` here, decorate it
with `@term("name")`, and give it a weight (`loss.<name>_weight` in `nstjax.config.LossConfig`).
Gatys and training then both use it. A term that compares against a statistic of the style
image's pixels passes `style_statistic=` (one of its VGG features, `feature_statistic=`): the
objective computes it once with the Gram targets (blend-weighted over style images) and hands
it over as `t.style_targets[name]`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Features = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TermInputs:
    """What a loss term may look at: the judged image, its features and the targets."""

    image: jax.Array  # (B, H, W, 3) in [0, 1]: the optimized image or the network's output
    feats: Features  # its VGG features at every layer the objective uses
    content_targets: Features  # target features at the content layers
    style_targets: Features  # target Gram matrices by style layer, and style statistics by term name
    content_layers: Mapping[str, float]  # layer -> weight
    style_layers: Mapping[str, float]


Term = Callable[[TermInputs], jax.Array]
StyleStatistic = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) style image in [0, 1] -> target
FeatureStatistic = Callable[[Features], Any]  # its (1, h, w, C) features at the style layers -> target pytree
#: Loss terms by name, in the order they are reported; the objective weights each by name.
TERMS: dict[str, Term] = {}
#: For terms that compare against the style image's pixels: the target they need, by term name.
STYLE_STATISTICS: dict[str, StyleStatistic] = {}
#: For terms that compare against a statistic of the style image's VGG features, by term name.
FEATURE_STATISTICS: dict[str, FeatureStatistic] = {}


def term(name: str, style_statistic: StyleStatistic | None = None,
         feature_statistic: FeatureStatistic | None = None) -> Callable[[Term], Term]:
    """Register a pure loss term under `name` (its weight is then `weights[name]`), with the
    statistic of a style image (of its pixels, or of its features at the style layers) it
    compares against, if any (blended linearly over styles)."""

    def register(fn: Term) -> Term:
        TERMS[name] = fn
        if style_statistic is not None:
            STYLE_STATISTICS[name] = style_statistic
        if feature_statistic is not None:
            FEATURE_STATISTICS[name] = feature_statistic
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


# The palette: the sliced Wasserstein distance between the image's colours and the style's, along
# fixed directions in RGB (the channels, grey and 12 seeded ones; targets and loss share them).
PALETTE_DIRECTIONS = np.concatenate([np.eye(3), np.ones((1, 3)), np.random.default_rng(0).standard_normal((12, 3))])
PALETTE_DIRECTIONS = (PALETTE_DIRECTIONS / np.linalg.norm(PALETTE_DIRECTIONS, axis=1, keepdims=True)).astype(np.float32)
PALETTE_QUANTILES = 1024  # points of the style's quantile function per direction
PALETTE_BINS = 256  # histogram bins per direction for the image's ranks


def palette_quantiles(rgb01: np.ndarray) -> np.ndarray:
    """(H, W, 3) style image -> (Q, D): its colours' quantile function along each direction,
    on the 0..255 scale."""
    proj = np.asarray(rgb01, np.float32).reshape(-1, 3) @ (255.0 * PALETTE_DIRECTIONS.T)
    return np.quantile(proj, (np.arange(PALETTE_QUANTILES) + 0.5) / PALETTE_QUANTILES, axis=0).astype(np.float32)


def palette_loss(rgb01: jax.Array, quantiles: jax.Array) -> jax.Array:
    """Squared sliced 2-Wasserstein distance between the colours of each image and the style's
    (the quantile function `quantiles`, (Q, D)), on the 0..255 scale, averaged over directions.

    Risser et al.'s histogram matching along each direction: every pixel's rank comes from a
    histogram (linear within its bin), its matched value from the style's quantile function at
    that rank, and the loss is mean((p - stop_gradient(matched))^2). Its gradient is the sorted
    sliced Wasserstein gradient without a sort (a sort of every pixel is slow on CPU).
    """
    b = rgb01.shape[0]
    p = rgb01.reshape(b, -1, 3).astype(jnp.float32) @ jnp.asarray(255.0 * PALETTE_DIRECTIONS.T)  # (B, N, D)
    # One image at a time (vmap): a batch sharded over devices stays sharded.
    matched = jax.vmap(_matched_values, in_axes=(0, None))(jax.lax.stop_gradient(p), quantiles)
    return jnp.mean(jnp.square(p - matched))


def _matched_values(p: jax.Array, quantiles: jax.Array) -> jax.Array:
    """(N, D) projections of one image -> the style's values at each pixel's rank, per direction."""
    dirs = jnp.asarray(255.0 * PALETTE_DIRECTIONS)
    lo = jnp.sum(jnp.minimum(dirs, 0.0), axis=1)  # each direction's range over the RGB cube
    width = (jnp.sum(jnp.maximum(dirs, 0.0), axis=1) - lo) / PALETTE_BINS
    return histogram_matched(p, quantiles, lo, width, PALETTE_BINS)


def histogram_matched(p: jax.Array, quantiles: jax.Array, lo: jax.Array, width: jax.Array, bins: int) -> jax.Array:
    """(N, D) values along D directions -> the target's value at each one's rank, per direction.

    Ranks come from one `bins`-bin histogram per direction starting at `lo` (D,) with bin width
    `width` (D,), linear within a bin (values outside are clipped to the end bins); the
    matched value is the target quantile function `quantiles` (Q, D) at that rank.
    """
    n, d = p.shape
    nq = quantiles.shape[0]
    pos = jnp.clip((p - lo) / width, 0.0, bins - 1e-3)
    idx = pos.astype(jnp.int32)
    key = jnp.arange(d) * bins + idx  # one histogram per direction, flat
    counts = jnp.zeros(d * bins, jnp.float32).at[key].add(1.0)
    below = (jnp.cumsum(counts.reshape(d, bins), axis=-1).ravel() - counts)
    rank = (below[key] + (pos - idx) * counts[key]) / n  # in [0, 1], linear within a bin
    q = jnp.clip(rank * nq - 0.5, 0.0, nq - 1.0)
    j0 = jnp.minimum(q.astype(jnp.int32), nq - 2)
    w = q - j0
    qt, col = quantiles.reshape(-1), jnp.arange(d)  # row-major (Q, D): [j, d] at j * D + d
    return qt[j0 * d + col] * (1.0 - w) + qt[(j0 + 1) * d + col] * w


# The patch palette: the same distance after averaging PATCH_PX x PATCH_PX blocks of the image
# and of the style, so one-pixel colour fringes along edges average out and only colours held
# over patches (the style's panes) count.
PATCH_PX = 4


def _block_means(x):
    """(..., H, W, 3) numpy or JAX array -> the means of its PATCH_PX x PATCH_PX blocks (edges cropped)."""
    h, w = x.shape[-3] // PATCH_PX, x.shape[-2] // PATCH_PX
    x = x[..., : h * PATCH_PX, : w * PATCH_PX, :]
    return x.reshape(*x.shape[:-3], h, PATCH_PX, w, PATCH_PX, 3).mean(axis=(-4, -2))


def patch_palette_quantiles(rgb01: np.ndarray) -> np.ndarray:
    """(H, W, 3) style image -> the palette quantiles of its PATCH_PX-averaged blocks."""
    return palette_quantiles(_block_means(np.asarray(rgb01, np.float32)))


def patch_palette_loss(rgb01: jax.Array, quantiles: jax.Array) -> jax.Array:
    """palette_loss of the (B, H, W, 3) images' PATCH_PX-averaged blocks."""
    return palette_loss(_block_means(rgb01), quantiles)


# The sliced Wasserstein style loss (Heitz et al. 2021): the whole distribution of the style's
# VGG features at each style layer, not only its second moments (the Gram matrix), matched
# along C fixed seeded directions per layer of C channels.
SW_QUANTILES = 256  # points of the style's quantile function per direction
SW_BINS = 256  # histogram bins per direction for the image's ranks
SW_MARGIN = 0.25  # the histogram spans the style's range widened by this share on each side


@functools.lru_cache(maxsize=None)
def sw_directions(channels: int) -> np.ndarray:
    """(C, C) unit directions in a C-channel feature space, the same for targets and loss."""
    d = np.random.default_rng(channels).standard_normal((channels, channels))
    return (d / np.linalg.norm(d, axis=0, keepdims=True)).astype(np.float32)


def feature_quantiles(feats: Features) -> dict[str, np.ndarray]:
    """Style-layer features of one style image, (1, H, W, C) each -> per layer, (Q, C): the
    quantile function of its features along each of `sw_directions(C)`."""
    out = {}
    for name, f in feats.items():
        f = np.asarray(f, np.float32)
        proj = f.reshape(-1, f.shape[-1]) @ sw_directions(f.shape[-1])
        out[name] = np.quantile(proj, (np.arange(SW_QUANTILES) + 0.5) / SW_QUANTILES, axis=0).astype(np.float32)
    return out


def sliced_wasserstein_loss(f: jax.Array, quantiles: jax.Array) -> jax.Array:
    """Squared sliced 2-Wasserstein distance between the (B, H, W, C) features of each image and
    the style's (its quantile functions, (Q, C)), in units of the style's own variance along
    the directions, so that every layer counts alike whatever its feature scale."""
    b, c = f.shape[0], f.shape[-1]
    p = f.reshape(b, -1, c).astype(jnp.float32) @ jnp.asarray(sw_directions(c))  # (B, N, C)
    span = quantiles[-1] - quantiles[0]
    lo = quantiles[0] - SW_MARGIN * span
    width = jnp.maximum((1.0 + 2.0 * SW_MARGIN) * span / SW_BINS, 1e-6)
    matched = jax.vmap(histogram_matched, in_axes=(0, None, None, None, None))(
        jax.lax.stop_gradient(p), quantiles, lo, width, SW_BINS)
    return jnp.mean(jnp.square(p - matched)) / (jnp.mean(jnp.var(quantiles, axis=0)) + 1e-6)


def feature_moments(feats: Features) -> dict[str, dict[str, np.ndarray]]:
    """Style-layer features of one style image, (1, H, W, C) each -> per layer, the channel
    means and standard deviations, (C,) each."""
    out = {}
    for name, f in feats.items():
        f = np.asarray(f, np.float32).reshape(-1, np.shape(f)[-1])
        out[name] = {"mean": f.mean(0), "std": np.sqrt(f.var(0) + 1e-5)}
    return out


def moment_loss(f: jax.Array, target: Mapping[str, jax.Array]) -> jax.Array:
    """Huang & Belongie's style loss at one layer: mean squared differences of the (B, H, W, C)
    features' channel means and standard deviations from the style's."""
    f = f.astype(jnp.float32)
    mean = f.mean(axis=(1, 2))
    std = jnp.sqrt(jnp.square(f - mean[:, None, None]).mean(axis=(1, 2)) + 1e-5)
    return mse(mean, target["mean"]) + mse(std, target["std"])


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
    return style_loss(t.feats, t.style_targets, t.style_layers)


@term("tv")
def tv_term(t: TermInputs) -> jax.Array:
    return tv_loss(t.image)


@term("palette", style_statistic=palette_quantiles)
def palette_term(t: TermInputs) -> jax.Array:
    return palette_loss(t.image, t.style_targets["palette"])


@term("patch_palette", style_statistic=patch_palette_quantiles)
def patch_palette_term(t: TermInputs) -> jax.Array:
    return patch_palette_loss(t.image, t.style_targets["patch_palette"])


@term("sw_style", feature_statistic=feature_quantiles)
def sw_style_term(t: TermInputs) -> jax.Array:
    if not t.style_layers:
        return jnp.zeros((), jnp.float32)
    targets = t.style_targets["sw_style"]
    return sum(sliced_wasserstein_loss(t.feats[k], targets[k]) for k in t.style_layers) / len(t.style_layers)


@term("moments", feature_statistic=feature_moments)
def moments_term(t: TermInputs) -> jax.Array:
    if not t.style_layers:
        return jnp.zeros((), jnp.float32)
    targets = t.style_targets["moments"]
    return sum(w * moment_loss(t.feats[k], targets[k]) for k, w in t.style_layers.items())
