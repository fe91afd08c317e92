"""Feed-forward stylization networks (Johnson et al. 2016) as Flax NNX modules.

``TransformerNet`` follows pytorch/examples ``fast_neural_style`` (the variant the field settled
on): reflection padding instead of zero padding, instance norm instead of batch norm, and
nearest-upsample + conv instead of transposed convs (no checkerboard artifacts).

Adding a network: write an ``nnx.Module`` whose constructor accepts
``(*, width, num_residual, dtype, rngs)`` keywords (ignore those that do not apply) and maps
NHWC float images in [0, 1] to the same shape, then add it to ``NETWORKS``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nstjax.errors import NstjaxError
from nstjax.padded_conv import padded_conv

Array = jax.Array

#: The spatial size must be divisible by this (two stride-2 downsamples, two x2 upsamples).
SIZE_MULTIPLE = 4

_DTYPES: dict[str, jnp.dtype] = {
    "float32": jnp.dtype(jnp.float32),
    "bfloat16": jnp.dtype(jnp.bfloat16),
    "float16": jnp.dtype(jnp.float16),
}


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

    def __call__(self, x: Array) -> Array:
        # nnx.Conv holds the parameters; the convolution itself is padded_conv, which picks
        # the formulation that is fast on the backend (see nstjax/padded_conv.py).
        c = self.conv
        xp, kernel = reflect_pad(x, self.pad), c.kernel.value
        bias = c.bias.value if c.bias is not None else None
        if c.dtype is not None:
            xp, kernel = xp.astype(c.dtype), kernel.astype(c.dtype)
            bias = None if bias is None else bias.astype(c.dtype)
        y = padded_conv(xp, kernel, c.strides[0])
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
        return self.conv(upsample_nearest2x(x))


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

    def __init__(self, features: int, *, dtype: jnp.dtype | None, rngs: nnx.Rngs) -> None:
        self.conv1 = ConvLayer(features, features, 3, dtype=dtype, rngs=rngs)
        self.in1 = instance_norm(features, dtype=dtype, rngs=rngs)
        self.conv2 = ConvLayer(features, features, 3, dtype=dtype, rngs=rngs)
        self.in2 = instance_norm(features, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        y = nnx.relu(self.in1(self.conv1(x)))
        y = self.in2(self.conv2(y))
        return x + y


class TransformerNet(nnx.Module):
    """Johnson et al. image transformation network, NHWC, [0, 1] RGB in, raw RGB out.

    Attribute names mirror pytorch/examples ``TransformerNet`` (conv1, in1, ..., deconv3) so
    that porting a torch state_dict is a rename plus a kernel transpose (OIHW -> HWIO).

    Args:
      width: multiplier for every hidden channel count (32, 64, 128 at 1.0).
      num_residual: number of residual blocks at the bottleneck.
      dtype: compute dtype (e.g. bfloat16 for mixed precision); params are always float32,
        instance-norm statistics are float32, and the output is float32.
      rngs: parameter RNGs.

    Initialization: flax defaults (lecun_normal kernels, zero biases, IN scale 1 / bias 0)
    everywhere except the last conv, whose kernel is lecun_normal scaled by 0.1 in variance and
    whose bias starts at 0.5. Its input is ReLU(IN(.)) with second moment ~0.5, so the initial
    output is ~0.5 +- 0.2: inside the [0, 1] image range rather than ~N(0, 0.7) around 0, so
    content/style losses start in a sane regime and clipping at export is not saturated.

    Parameter count at width 1.0 / 5 blocks: 1,679,235, as pytorch/examples. 2,240 of those
    get an identically zero gradient and are kept only for parity: every conv bias that feeds
    an instance norm (its mean subtraction removes a per-channel constant) and each residual
    block's second IN bias (a constant on the residual stream only reaches such convs).
    """

    def __init__(
        self,
        *,
        width: float = 1.0,
        num_residual: int = 5,
        dtype: jnp.dtype | None = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        # Non-partitionable threefry only changes which random numbers init draws: with the
        # default (partitionable) scheme XLA:CPU takes seconds to compile the RNG for each new
        # kernel shape (measured 5-10x slower init), and init is not sharded here anyway.
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
        self.in1 = instance_norm(c1, dtype=dtype, rngs=rngs)
        self.conv2 = ConvLayer(c1, c2, 3, stride=2, dtype=dtype, rngs=rngs)
        self.in2 = instance_norm(c2, dtype=dtype, rngs=rngs)
        self.conv3 = ConvLayer(c2, c3, 3, stride=2, dtype=dtype, rngs=rngs)
        self.in3 = instance_norm(c3, dtype=dtype, rngs=rngs)
        blocks = [ResidualBlock(c3, dtype=dtype, rngs=rngs) for _ in range(num_residual)]
        self.res = nnx.List(blocks)
        self.deconv1 = UpsampleConvLayer(c3, c2, 3, dtype=dtype, rngs=rngs)
        self.in4 = instance_norm(c2, dtype=dtype, rngs=rngs)
        self.deconv2 = UpsampleConvLayer(c2, c1, 3, dtype=dtype, rngs=rngs)
        self.in5 = instance_norm(c1, dtype=dtype, rngs=rngs)
        self.deconv3 = ConvLayer(
            c1,
            3,
            9,
            dtype=dtype,
            kernel_init=nnx.initializers.variance_scaling(0.1, "fan_in", "truncated_normal"),
            bias_init=nnx.initializers.constant(0.5),
            rngs=rngs,
        )

    def __call__(self, x: Array) -> Array:
        """Stylize a (B, H, W, 3) batch; any H, W >= 1; returns float32 of the same shape.

        Why pad to a multiple of 4: a reflect-padded stride-2 conv maps H to ceil(H/2), so after
        two of them and two x2 upsamples the decoder returns 4 * ceil(H/4) rows, not H. Padding
        the input first makes every stage exactly H/2, H/4 (the geometry the net is trained
        at), lets the <= 3 extra rows/cols be split between both borders instead of all
        appearing at the bottom/right, and the crop then removes exactly what was added.
        Reflection keeps the padded strip image-like, so instance-norm statistics barely move.
        """
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected an NHWC RGB batch (B, H, W, 3), got shape {x.shape}")
        _, h, w, _ = x.shape
        ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
        top, left = ph // 2, pw // 2
        if ph or pw:
            pads = ((0, 0), (top, ph - top), (left, pw - left), (0, 0))
            # jnp.pad "reflect" also handles pads wider than the image (it reflects repeatedly,
            # a 1-pixel image just repeats), so tiny inputs work too.
            x = jnp.pad(x, pads, mode="reflect")
        if self.dtype is not None:
            x = x.astype(self.dtype)

        y = nnx.relu(self.in1(self.conv1(x)))
        y = nnx.relu(self.in2(self.conv2(y)))
        y = nnx.relu(self.in3(self.conv3(y)))
        for block in self.res:
            y = block(y)
        y = nnx.relu(self.in4(self.deconv1(y)))
        y = nnx.relu(self.in5(self.deconv2(y)))
        y = self.deconv3(y)
        return y[:, top : top + h, left : left + w, :].astype(jnp.float32)


#: Registry of feed-forward networks by config ``model.name``.
NETWORKS: dict[str, Callable[..., nnx.Module]] = {"johnson": TransformerNet}


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    """Read a field from a Mapping (dict, OmegaConf DictConfig) or an attribute object."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def parse_dtype(name: str) -> jnp.dtype:
    """Config dtype string -> jnp dtype, with a one-line error for typos."""
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise NstjaxError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}") from None


def build_network(model_cfg: Any, *, rngs: nnx.Rngs) -> nnx.Module:
    """Build the network named by ``model_cfg.name`` (fields: name, width, num_residual, dtype)."""
    name = _cfg_get(model_cfg, "name", None)
    if name not in NETWORKS:
        raise NstjaxError(f"unknown model.name {name!r}; available: {', '.join(sorted(NETWORKS))}")
    width = float(_cfg_get(model_cfg, "width", 1.0))
    if not width > 0:
        raise NstjaxError(f"model.width must be > 0, got {width}")
    num_residual = int(_cfg_get(model_cfg, "num_residual", 5))
    if num_residual < 0:
        raise NstjaxError(f"model.num_residual must be >= 0, got {num_residual}")
    dtype = parse_dtype(_cfg_get(model_cfg, "dtype", "float32"))
    factory = NETWORKS[name]

    # Construct under jit: all initializers become one XLA program instead of one eager
    # compile per kernel shape (about 2x faster to build on CPU). Values are the same.
    @nnx.jit
    def construct(rngs: nnx.Rngs) -> nnx.Module:
        return factory(width=width, num_residual=num_residual, dtype=dtype, rngs=rngs)

    return construct(rngs)


def count_params(model: nnx.Module) -> int:
    """Total number of trainable parameter elements."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
