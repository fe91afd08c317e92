"""Johnson et al. (2016) image transformation network, as pytorch/examples' TransformerNet.

Reflection padding instead of zero padding, instance norm instead of batch norm, and
nearest-upsample + conv instead of transposed convs (no checkerboard artifacts).
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nstjax.errors import NstjaxError
from nstjax.ops.pad import pad_to_multiple
from nstjax.ops.padded_conv import padded_conv
from nstjax.ops.upsample_conv import upsample2x_conv3x3

Array = jax.Array

#: The spatial size must be divisible by this (two stride-2 downsamples, two x2 upsamples).
SIZE_MULTIPLE = 4
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class JohnsonConfig:
    """`model=johnson`: conf/model/johnson.yaml."""

    name: str = "johnson"
    width: float = 1.0  # multiplies every hidden channel count (32/64/128 at 1.0)
    num_residual: int = 5  # residual blocks at the 1/4-resolution bottleneck
    dtype: str = "float32"  # compute dtype; params stay float32
    pixel_scale: float = 1.0  # the weights' pixel range: 255 for pytorch/examples' models
    num_styles: int = 1  # >1: one network for many styles (conditional instance norm), set by style.multi
    style_names: Optional[List[str]] = None  # the styles' names, in order (num_styles > 1)

    def __post_init__(self) -> None:
        try:
            self.width, self.num_residual = float(self.width), int(self.num_residual)
            self.num_styles = int(self.num_styles)
        except (TypeError, ValueError):
            raise NstjaxError(f"model.width / model.num_residual / model.num_styles must be numbers, got "
                              f"{self.width!r} / {self.num_residual!r} / {self.num_styles!r}") from None
        if self.num_styles < 1:
            raise NstjaxError(f"model.num_styles must be >= 1, got {self.num_styles}")
        if self.style_names is not None:
            self.style_names = [str(n) for n in self.style_names]
            if len(self.style_names) != self.num_styles or len(set(self.style_names)) != self.num_styles:
                raise NstjaxError(f"model.style_names: expected {self.num_styles} distinct names, "
                                  f"got {self.style_names}")
        if not self.width > 0:
            raise NstjaxError(f"model.width must be > 0, got {self.width}")
        if self.num_residual < 0:
            raise NstjaxError(f"model.num_residual must be >= 0, got {self.num_residual}")
        if not float(self.pixel_scale) > 0:
            raise NstjaxError(f"model.pixel_scale must be > 0, got {self.pixel_scale}")
        if self.dtype not in DTYPES:
            raise NstjaxError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


def reflect_pad(x: Array, pad: int) -> Array:
    """Reflection-pad H and W of an NHWC array by ``pad`` on each side.

    Reflection (not zero) padding keeps image borders statistically like the interior, so
    stylized images get no dark frame.
    """
    if pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def upsample_nearest2x(x: Array) -> Array:
    """Nearest-neighbour x2 upsampling of NHWC via broadcast + reshape (one fused op, no gather)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def scale_channels(channels: int, width: float) -> int:
    """Hidden channel count at a width multiplier: rounded, at least 1."""
    return max(1, int(round(channels * width)))


class ConvLayer(nnx.Module):
    """Reflection pad (k // 2) then a VALID conv: 'same'-size output at stride 1, H/s at stride s."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dtype: jnp.dtype | None = None,
        kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
        bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ) -> None:
        self.pad = kernel_size // 2
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size=(kernel_size, kernel_size),
            strides=(stride, stride),
            padding="VALID",
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=kernel_init,
            bias_init=bias_init,
            rngs=rngs,
        )

    def operands(self, x: Array) -> tuple[Array, Array, Array | None]:
        """(x, kernel, bias) in the compute dtype."""
        c = self.conv
        kernel = c.kernel[...]
        bias = c.bias[...] if c.bias is not None else None
        if c.dtype is not None:
            x, kernel = x.astype(c.dtype), kernel.astype(c.dtype)
            bias = None if bias is None else bias.astype(c.dtype)
        return x, kernel, bias

    def __call__(self, x: Array) -> Array:
        # nnx.Conv holds the parameters; the convolution itself is padded_conv, which picks
        # the formulation that is fast on the backend (see nstjax/ops/padded_conv.py).
        x, kernel, bias = self.operands(x)
        y = padded_conv(reflect_pad(x, self.pad), kernel, self.conv.strides[0])
        return y if bias is None else y + bias


class UpsampleConvLayer(nnx.Module):
    """Nearest x2 upsample then ``ConvLayer``: avoids the checkerboard artifacts of ConvTranspose."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.conv = ConvLayer(in_features, out_features, kernel_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        if self.conv.pad != 1 or jax.default_backend() != "cpu":
            return self.conv(upsample_nearest2x(x))
        # On CPU: the same numbers as one 2x2 convolution at x's resolution (4 taps per output
        # instead of 9, no upsampled copy; nstjax/ops/upsample_conv.py). GPUs keep cuDNN's.
        x, kernel, bias = self.conv.operands(x)
        y = upsample2x_conv3x3(x, kernel, padded_conv)
        return y if bias is None else y + bias


class ConditionalInstanceNorm(nnx.Module):
    """Instance norm with one (scale, bias) row per style (Dumoulin et al. 2017, "A learned
    representation for artistic style"): `style` (B, num_styles) weights pick a row, or mix
    rows (a convex mix of rows is the paper's style interpolation). The parameters keep
    nnx.InstanceNorm's names with a leading style axis, so selecting a style
    (`select_style`) leaves an ordinary single-style network."""

    def __init__(self, features: int, num_styles: int, *, dtype: jnp.dtype | None) -> None:
        self.scale = nnx.Param(jnp.ones((num_styles, features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_styles, features), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: Array, style: Array) -> Array:
        xf = x.astype(jnp.float32)  # statistics in float32, two-pass variance, as instance_norm
        mean = xf.mean(axis=(1, 2), keepdims=True)
        var = jnp.square(xf - mean).mean(axis=(1, 2), keepdims=True)
        style = style.astype(jnp.float32)
        scale = (style @ self.scale[...])[:, None, None, :]
        bias = (style @ self.bias[...])[:, None, None, :]
        y = (xf - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias
        return y.astype(self.dtype or x.dtype)


def norm_layer(features: int, num_styles: int, *, dtype: jnp.dtype | None,
               rngs: nnx.Rngs) -> nnx.Module:
    if num_styles == 1:
        return instance_norm(features, dtype=dtype, rngs=rngs)
    return ConditionalInstanceNorm(features, num_styles, dtype=dtype)


def apply_norm(norm: nnx.Module, x: Array, style: Array | None) -> Array:
    return norm(x, style) if isinstance(norm, ConditionalInstanceNorm) else norm(x)


def instance_norm(features: int, *, dtype: jnp.dtype | None, rngs: nnx.Rngs) -> nnx.InstanceNorm:
    """Affine instance norm, eps 1e-5 (as torch.nn.InstanceNorm2d).

    nnx.InstanceNorm computes mean/variance in float32 even for bfloat16 inputs; the two-pass
    variance (``use_fast_variance=False``) avoids E[x^2] - E[x]^2 cancellation, and makes the
    variance of a constant map exactly 0.
    """
    return nnx.InstanceNorm(
        features,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        rngs=rngs,
    )


class ResidualBlock(nnx.Module):
    """conv3-IN-ReLU-conv3-IN plus identity skip (no ReLU after the sum, as in Gross & Wilber)."""

    def __init__(self, features: int, *, num_styles: int = 1, dtype: jnp.dtype | None, rngs: nnx.Rngs) -> None:
        self.conv1 = ConvLayer(features, features, 3, dtype=dtype, rngs=rngs)
        self.in1 = norm_layer(features, num_styles, dtype=dtype, rngs=rngs)
        self.conv2 = ConvLayer(features, features, 3, dtype=dtype, rngs=rngs)
        self.in2 = norm_layer(features, num_styles, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, style: Array | None = None) -> Array:
        y = nnx.relu(apply_norm(self.in1, self.conv1(x), style))
        y = apply_norm(self.in2, self.conv2(y), style)
        return x + y


class TransformerNet(nnx.Module):
    """Johnson et al. image transformation network, NHWC, [0, 1] RGB in, raw RGB out.

    Attribute names mirror pytorch/examples' TransformerNet (conv1, in1, ..., deconv3), so a
    torch state_dict ports by renaming and transposing kernels (OIHW -> HWIO). `width` scales
    every hidden channel count; `dtype` is the compute dtype (params, instance-norm statistics
    and the output stay float32). The last conv starts near zero with bias 0.5, so the first
    outputs lie inside the image range. Some conv biases feed an instance norm and get a zero
    gradient; they are kept for parameter parity with pytorch/examples.
    """

    def __init__(
        self,
        *,
        width: float = 1.0,
        num_residual: int = 5,
        dtype: jnp.dtype | None = jnp.float32,
        pixel_scale: float = 1.0,
        num_styles: int = 1,
        rngs: nnx.Rngs,
    ) -> None:
        self.pixel_scale = float(pixel_scale)
        self.num_styles = int(num_styles)
        # Non-partitionable threefry: XLA:CPU compiles the partitionable RNG slowly for every
        # kernel shape, and init is not sharded anyway (only which numbers are drawn changes).
        with jax.threefry_partitionable(False):
            self._build(width, num_residual, dtype, rngs)

    def _build(
        self, width: float, num_residual: int, dtype: jnp.dtype | None, rngs: nnx.Rngs
    ) -> None:
        c1, c2, c3 = (scale_channels(c, width) for c in (32, 64, 128))
        self.width = width
        self.num_residual = num_residual
        self.dtype = dtype
        self.conv1 = ConvLayer(3, c1, 9, dtype=dtype, rngs=rngs)
        self.in1 = norm_layer(c1, self.num_styles, dtype=dtype, rngs=rngs)
        self.conv2 = ConvLayer(c1, c2, 3, stride=2, dtype=dtype, rngs=rngs)
        self.in2 = norm_layer(c2, self.num_styles, dtype=dtype, rngs=rngs)
        self.conv3 = ConvLayer(c2, c3, 3, stride=2, dtype=dtype, rngs=rngs)
        self.in3 = norm_layer(c3, self.num_styles, dtype=dtype, rngs=rngs)
        blocks = [ResidualBlock(c3, num_styles=self.num_styles, dtype=dtype, rngs=rngs) for _ in range(num_residual)]
        self.res = nnx.List(blocks)
        self.deconv1 = UpsampleConvLayer(c3, c2, 3, dtype=dtype, rngs=rngs)
        self.in4 = norm_layer(c2, self.num_styles, dtype=dtype, rngs=rngs)
        self.deconv2 = UpsampleConvLayer(c2, c1, 3, dtype=dtype, rngs=rngs)
        self.in5 = norm_layer(c1, self.num_styles, dtype=dtype, rngs=rngs)
        self.deconv3 = ConvLayer(
            c1,
            3,
            9,
            dtype=dtype,
            kernel_init=nnx.initializers.variance_scaling(0.1, "fan_in", "truncated_normal"),
            bias_init=nnx.initializers.constant(0.5),
            rngs=rngs,
        )

    def __call__(self, x: Array, style: Array | None = None) -> Array:
        """Stylize a (B, H, W, 3) batch; any H, W >= 1; returns float32 of the same shape.

        The input is reflect-padded to a multiple of 4 first, so every stage is exactly H/2,
        H/4 (the geometry the net trains at), and the crop removes exactly what was added.
        A network of several styles also takes `style`: (B, num_styles) weights per image
        (one-hot: that style; a convex mix: the styles interpolated).
        """
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected an NHWC RGB batch (B, H, W, 3), got shape {x.shape}")
        if self.num_styles > 1 and (style is None or style.shape != (x.shape[0], self.num_styles)):
            raise ValueError(f"a network of {self.num_styles} styles needs style weights of shape "
                             f"({x.shape[0]}, {self.num_styles}), got "
                             f"{None if style is None else style.shape}")
        x, crop = pad_to_multiple(x, SIZE_MULTIPLE, jnp)
        if self.pixel_scale != 1.0:
            x = x * self.pixel_scale
        if self.dtype is not None:
            x = x.astype(self.dtype)

        y = nnx.relu(apply_norm(self.in1, self.conv1(x), style))
        y = nnx.relu(apply_norm(self.in2, self.conv2(y), style))
        y = nnx.relu(apply_norm(self.in3, self.conv3(y), style))
        for block in self.res:
            y = block(y, style)
        y = nnx.relu(apply_norm(self.in4, self.deconv1(y), style))
        y = nnx.relu(apply_norm(self.in5, self.deconv2(y), style))
        y = self.deconv3(y)
        y = crop(y).astype(jnp.float32)
        return y / self.pixel_scale if self.pixel_scale != 1.0 else y


def build(cfg: JohnsonConfig, rngs: nnx.Rngs) -> TransformerNet:
    return TransformerNet(width=cfg.width, num_residual=cfg.num_residual, dtype=jnp.dtype(cfg.dtype),
                          pixel_scale=cfg.pixel_scale, num_styles=cfg.num_styles, rngs=rngs)


def select_style(cfg: JohnsonConfig, params: dict[str, Any], weights: np.ndarray
                 ) -> tuple[JohnsonConfig, dict[str, Any]]:
    """A network of several styles, fixed to one style (or a mix: `weights`, (num_styles,)),
    as an ordinary single-style network: each conditional norm's rows mixed into one. Exact:
    the norm is linear in its rows, so the result computes what `style=weights` computes."""
    w = np.asarray(weights, np.float32)
    out = {}
    for name, value in params.items():  # the conditional norms' rows are the only 2-D scale/bias leaves
        is_row_table = name.rsplit("/", 1)[-1] in ("scale", "bias") and np.ndim(value) == 2
        out[name] = (w @ np.asarray(value, np.float32)).astype(np.asarray(value).dtype) if is_row_table else value
    return dataclasses.replace(cfg, num_styles=1, style_names=None), out
