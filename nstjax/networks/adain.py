"""Any style in one network: adaptive instance normalization (Huang & Belongie 2017, "AdaIN").

The encoder is VGG-19 up to relu4_1 with the loss network's ImageNet weights, frozen. AdaIN
gives the photo's relu4_1 features the channel means and standard deviations of the style
image's, and a trained decoder (mirroring the encoder: nearest upsampling, reflection
padding) turns them back into an image. The style is an input image, so a network trained on
a set of paintings stylizes with paintings it never saw.

`fix_style` folds one style (or a mix: the paper's style interpolation, exact because AdaIN is
affine in the style's statistics) into a network that takes the photo alone, which every
server and exporter handles as any other single-style network.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nstjax.errors import NstjaxError
from nstjax.ops.pad import pad_to_multiple
from nstjax.networks.johnson import DTYPES, ConvLayer, UpsampleConvLayer, scale_channels

Array = jax.Array

#: Three 2x2 poolings in the encoder and three x2 upsamplings in the decoder.
SIZE_MULTIPLE = 8
#: The encoder: VGG-19's convolutions up to relu4_1 (a pool after conv1_2, conv2_2, conv3_4).
ENCODER = ("conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1", "conv3_2", "conv3_3",
           "conv3_4", "pool", "conv4_1")
_CHANNELS = {"conv1": 64, "conv2": 128, "conv3": 256, "conv4": 512}
EPS = 1e-5
CONTENT_TARGETS = ("adain", "photo")
#: The decoder reads relu4_1 features scaled to the range of a [0, 1]-input VGG's (Caffe inputs are 0..255).
FEATURE_SCALE = 1.0 / 255.0


@dataclasses.dataclass
class AdainConfig:
    """`model=adain`: conf/model/adain.yaml."""

    name: str = "adain"
    width: float = 1.0  # multiplies the decoder's channel counts (256/128/64 at 1.0); the encoder is VGG's
    style_size: int = 256  # style images are seen as a centre square of this side (short side resized to it)
    dtype: str = "float32"  # compute dtype; params stay float32
    fixed_style: bool = False  # True: one style folded in (fix_style); the network takes the photo alone
    content_target: str = "adain"  # training: content judged at relu4_1 against the AdaIN features (the
    # paper's), or "photo": against the photo's own features at loss.content_layers

    def __post_init__(self) -> None:
        try:
            self.width, self.style_size = float(self.width), int(self.style_size)
        except (TypeError, ValueError):
            raise NstjaxError(f"model.width / model.style_size must be numbers, got {self.width!r} / "
                              f"{self.style_size!r}") from None
        if not self.width > 0:
            raise NstjaxError(f"model.width must be > 0, got {self.width}")
        if self.style_size < SIZE_MULTIPLE * 4:
            raise NstjaxError(f"model.style_size must be >= {SIZE_MULTIPLE * 4}, got {self.style_size}")
        if self.dtype not in DTYPES:
            raise NstjaxError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        self.fixed_style = bool(self.fixed_style)
        if self.content_target not in CONTENT_TARGETS:
            raise NstjaxError(f"model.content_target must be one of {', '.join(CONTENT_TARGETS)}, "
                              f"got {self.content_target!r}")


def style_view(image: np.ndarray, size: int) -> np.ndarray:
    """How the network sees a style image: short side resized to `size`, the centre square
    cropped (training stacks the styles, so they share one shape; serving sees the same)."""
    from nstjax.image import resize

    h, w = image.shape[:2]
    s = size / min(h, w)
    hh, ww = max(size, round(h * s)), max(size, round(w * s))
    x = resize(np.asarray(image, np.float32), (hh, ww))
    top, left = (hh - size) // 2, (ww - size) // 2
    return x[top: top + size, left: left + size]


def moments(f: Array) -> tuple[Array, Array]:
    """(B, H, W, C) -> per-image channel means and standard deviations, (B, 1, 1, C) each."""
    f = f.astype(jnp.float32)
    mean = f.mean(axis=(1, 2), keepdims=True)
    return mean, jnp.sqrt(jnp.square(f - mean).mean(axis=(1, 2), keepdims=True) + EPS)


def adain(content: Array, style_mean: Array, style_std: Array) -> Array:
    """The content features with the style's channel statistics."""
    mean, std = moments(content)
    return (content.astype(jnp.float32) - mean) / std * style_std + style_mean


class Encoder(nnx.Module):
    """VGG-19 up to relu4_1 (Caffe preprocessing, zero padding: as its ImageNet weights were
    trained). Frozen: its weights pass through stop_gradient, so training never moves them."""

    def __init__(self, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        convs, cin = {}, 3
        for name in ENCODER:
            if name != "pool":
                cout = _CHANNELS[name.split("_")[0]]
                convs[name] = nnx.Conv(cin, cout, (3, 3), padding="SAME", dtype=dtype, rngs=rngs)
                cin = cout
        self.convs = nnx.Dict(convs)
        self.dtype = dtype

    def __call__(self, rgb01: Array) -> Array:
        from nstjax.vgg import pool2x2, preprocess

        x = preprocess(rgb01.astype(jnp.float32)).astype(self.dtype)
        for name in ENCODER:
            if name == "pool":
                x = pool2x2(x, "max")
                continue
            conv = self.convs[name]
            k = jax.lax.stop_gradient(conv.kernel[...]).astype(self.dtype)
            b = jax.lax.stop_gradient(conv.bias[...]).astype(self.dtype)
            x = jax.nn.relu(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + b)
        return x.astype(jnp.float32)


class Decoder(nnx.Module):
    """relu4_1 features -> image: the encoder mirrored (pytorch-AdaIN's decoder)."""

    def __init__(self, width: float, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        c256, c128, c64 = (scale_channels(c, width) for c in (256, 128, 64))
        kw = dict(dtype=dtype, rngs=rngs)
        self.conv4_1 = ConvLayer(512, c256, 3, **kw)
        self.conv3_4 = UpsampleConvLayer(c256, c256, **kw)
        self.conv3_3 = ConvLayer(c256, c256, 3, **kw)
        self.conv3_2 = ConvLayer(c256, c256, 3, **kw)
        self.conv3_1 = ConvLayer(c256, c128, 3, **kw)
        self.conv2_2 = UpsampleConvLayer(c128, c128, **kw)
        self.conv2_1 = ConvLayer(c128, c64, 3, **kw)
        self.conv1_2 = UpsampleConvLayer(c64, c64, **kw)
        self.conv1_1 = ConvLayer(c64, 3, 3, **kw)

    def __call__(self, t: Array) -> Array:
        y = t
        for layer in (self.conv4_1, self.conv3_4, self.conv3_3, self.conv3_2, self.conv3_1, self.conv2_2,
                      self.conv2_1, self.conv1_2):
            y = jax.nn.relu(layer(y))
        return self.conv1_1(y).astype(jnp.float32)


class AdainNet(nnx.Module):
    """`(photos, style)` -> stylized photos, NHWC in [0, 1]; any H, W (reflect-padded to a
    multiple of 8 and cropped back). `style`: (B, 2, 512), each style's relu4_1 channel means
    and standard deviations (`style_rows` of its image): the encoder is frozen, so training
    computes them once per style, not per step. With `fixed_style`, `photos` alone."""

    def __init__(self, cfg: AdainConfig, *, rngs: nnx.Rngs) -> None:
        dtype = jnp.dtype(cfg.dtype)
        self.encoder = Encoder(dtype=dtype, rngs=rngs)
        self.decoder = Decoder(cfg.width, dtype=dtype, rngs=rngs)
        if cfg.fixed_style:
            self.style_mean = nnx.Param(jnp.zeros((512,), jnp.float32))
            self.style_std = nnx.Param(jnp.ones((512,), jnp.float32))
        self.fixed_style = cfg.fixed_style
        self.content_target = cfg.content_target

    def style_rows(self, images: Array) -> Array:
        """(B, S, S, 3) style images (`style_view`) -> (B, 2, 512): relu4_1 channel means, stds."""
        mean, std = moments(self.encoder(images))
        return jnp.stack([mean[:, 0, 0], std[:, 0, 0]], axis=1)

    def _statistics(self, style: Array | None) -> tuple[Array, Array]:
        if self.fixed_style:
            return self.style_mean[...][None, None, None], self.style_std[...][None, None, None]
        if style is None:
            raise NstjaxError("model adain: stylizing needs a style image (choose one with model_style=PATH)")
        return style[:, 0, None, None, :], style[:, 1, None, None, :]

    def __call__(self, x: Array, style: Array | None = None) -> Array:
        x, crop = pad_to_multiple(x, SIZE_MULTIPLE, jnp)
        y = self.decoder(adain(self.encoder(x), *self._statistics(style)) * FEATURE_SCALE)
        return crop(y)

    def content_targets(self, x: Array, style: Array, layers: Sequence[str]) -> dict[str, Array] | None:
        """What training judges the output's content against: the AdaIN features themselves,
        at relu4_1 (Huang & Belongie), or None: the photo's own features (`content_target`)."""
        if self.content_target != "adain":
            return None
        if tuple(layers) != ("relu4_1",):
            raise NstjaxError(f"model.content_target=adain judges content at relu4_1 only; loss.content_layers "
                              f"is {list(layers)} (set loss.content_layers=[relu4_1] or model.content_target=photo)")
        return {"relu4_1": jax.lax.stop_gradient(adain(self.encoder(x), *self._statistics(style)))}


def build(cfg: AdainConfig, rngs: nnx.Rngs) -> AdainNet:
    return AdainNet(cfg, rngs=rngs)


def from_loss_network(model: AdainNet, vgg: Any) -> None:
    """Give the encoder the loss network's ImageNet weights (training starts from them)."""
    for name, conv in model.encoder.convs.items():  # copies: training donates the network's buffers
        conv.kernel.set_value(jnp.array(vgg.convs[name].kernel[...], jnp.float32, copy=True))
        conv.bias.set_value(jnp.array(vgg.convs[name].bias[...], jnp.float32, copy=True))


def conditions(model: AdainNet, cfg: AdainConfig, styles: Sequence[np.ndarray]) -> np.ndarray:
    """What the network is conditioned on per style during training: each style's `style_rows`,
    computed once with its (frozen) encoder. (N, 2, 512)."""
    rows = nnx.jit(lambda m, s: m.style_rows(s))
    return np.concatenate([np.asarray(rows(model, jnp.asarray(style_view(s, cfg.style_size))[None]))
                           for s in styles])


def fix_style(cfg: AdainConfig, params: Mapping[str, Any], styles: Sequence[np.ndarray], weights: np.ndarray
              ) -> tuple[AdainConfig, dict[str, Any]]:
    """A network fixed to the style images `styles`, mixed by `weights` (summing to 1): their
    relu4_1 statistics, mixed linearly, become parameters. Exact: AdaIN is affine in them."""
    from nstjax import trees

    if cfg.fixed_style:
        raise NstjaxError("model adain: this network already has its style folded in")
    model = nnx.eval_shape(lambda: AdainNet(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model.encoder, nnx.Param)
    flat = trees.flatten(state, drop_variable_value=True)
    enc = jax.tree.unflatten(jax.tree.structure(state),
                             [jnp.asarray(params[f"encoder/{n}"]) for n in flat])
    stats = jax.jit(lambda e, s: moments(nnx.merge(graphdef, e)(s)))
    w = np.asarray(weights, np.float32)
    mean = np.zeros(512, np.float32)
    std = np.zeros(512, np.float32)
    for wi, s in zip(w, styles):
        m, sd = stats(enc, jnp.asarray(style_view(s, cfg.style_size))[None])
        mean += wi * np.asarray(m).reshape(-1)
        std += wi * np.asarray(sd).reshape(-1)
    return dataclasses.replace(cfg, fixed_style=True), {**params, "style_mean": mean, "style_std": std}
