"""The VGG-19 loss network (Simonyan & Zisserman, ImageNet weights) in Flax NNX.

One forward pass returns every named feature a loss asks for (``relu4_2``, ``conv1_1``, ``pool3``...),
so each image is encoded once for all losses. The network stops at the deepest requested layer.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import weakref
from functools import cache, partial

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nstjax import assets
from nstjax.ops import winograd
from nstjax.errors import NstjaxError

# Caffe preprocessing the weights were trained with: BGR, 0..255, mean subtracted.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
BLOCKS = (2, 2, 4, 4, 4)
CHANNELS = (64, 128, 256, 512, 512)
CONV_IMPLS = ("auto", "xla", "flipped", "winograd")
_DN = ("NHWC", "HWIO", "NHWC")
WINOGRAD_MIN_CHANNELS = 128  # 'winograd' keeps direct convolutions for the 64-channel layers (faster there)


@cache
def layer_order() -> tuple[str, ...]:
    """All layer names in forward order: conv1_1, relu1_1, ..., pool1, ..., relu5_4."""
    names: list[str] = []
    for b, n in enumerate(BLOCKS, 1):
        for c in range(1, n + 1):
            names += [f"conv{b}_{c}", f"relu{b}_{c}"]
        if b < len(BLOCKS):
            names.append(f"pool{b}")
    return tuple(names)


def check_layers(layers: Iterable[str], setting: str = "layers") -> None:
    known = set(layer_order())
    for name in layers:
        if name not in known:
            raise NstjaxError(f"{setting}: unknown VGG-19 layer {name!r} (use conv1_1..relu5_4 or pool1..pool4)")


def min_input_side(layers: Iterable[str]) -> int:
    """Smallest image side whose features reach every layer in `layers` (each pool halves it)."""
    order = layer_order()
    deepest = max(order.index(n) for n in layers)
    return 2 ** sum(1 for n in order[:deepest] if n.startswith("pool"))


def preprocess(rgb01: jax.Array) -> jax.Array:
    """[0, 1] RGB -> Caffe input (0..255 BGR minus the ImageNet mean)."""
    return rgb01[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR)


def pool2x2(x: jax.Array, kind: str = "max") -> jax.Array:
    """2x2 stride-2 VALID pooling written as reshape + reduce.

    Same values as reduce_window pooling, but its gradient is an elementwise mask that XLA
    fuses, instead of select-and-scatter, which is ~5x slower on CPU: it matters for Gatys,
    which backpropagates through every pool at full image resolution each step.
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)) if kind == "max" else x.mean(axis=(2, 4))


class VGG19(nnx.Module):
    """VGG-19 convolutional trunk (NHWC). `pooling` is 'max' (the original) or 'avg' (Gatys)."""

    def __init__(self, *, pooling: str = "max", dtype=jnp.float32, conv_impl: str = "auto",
                 rngs: nnx.Rngs | None = None):
        if pooling not in ("max", "avg"):
            raise NstjaxError(f"pooling: expected 'max' or 'avg', got {pooling!r}")
        if conv_impl not in CONV_IMPLS:
            raise NstjaxError(f"vgg.conv_impl: expected one of {', '.join(CONV_IMPLS)}, got {conv_impl!r}")
        rngs = rngs or nnx.Rngs(0)
        convs = {}
        cin = 3
        for b, (n, cout) in enumerate(zip(BLOCKS, CHANNELS), 1):
            for c in range(1, n + 1):
                convs[f"conv{b}_{c}"] = nnx.Conv(cin, cout, (3, 3), padding="SAME", dtype=dtype, rngs=rngs)
                cin = cout
        self.convs = nnx.Dict(convs)
        self.pooling = pooling
        self.dtype = dtype
        self.conv_impl = conv_impl

    def _pool(self, x: jax.Array) -> jax.Array:
        return pool2x2(x, self.pooling)

    def __call__(self, rgb01: jax.Array, layers: Sequence[str],
                 frozen: Mapping[str, FrozenConv] | None = None) -> dict[str, jax.Array]:
        """Features of a [0, 1] RGB batch at `layers` (float32), computed up to the deepest one.

        `frozen` (from `frozen_kernels`) switches the listed convolutions to their precomputed
        frozen-weight form: faster, and gradients flow to the input only, as a loss network needs.
        """
        wanted = set(layers)
        order = layer_order()
        last = max(order.index(n) for n in wanted)
        x = preprocess(rgb01.astype(jnp.float32)).astype(self.dtype)
        out: dict[str, jax.Array] = {}
        for name in order[: last + 1]:
            if name.startswith("conv"):
                if frozen is not None and name in frozen:
                    fz = frozen[name]
                    x = frozen_conv(x, fz.fwd, fz.bwd, fz.kind) + self.convs[name].bias[...].astype(x.dtype)
                else:
                    x = self.convs[name](x)
            elif name.startswith("relu"):
                x = jax.nn.relu(x)
            else:
                x = self._pool(x)
            if name in wanted:
                out[name] = x.astype(jnp.float32)
        return out


@partial(jax.tree_util.register_dataclass, data_fields=["fwd", "bwd"], meta_fields=["kind"])
@dataclasses.dataclass(frozen=True)
class FrozenConv:
    """Precomputed kernels of one frozen 3x3 convolution.

    `fwd` is the kernel as used forward; `bwd` the kernel of the input gradient (the forward
    kernel flipped in space with Cin and Cout swapped), so no step re-derives it. `kind` (static)
    says their form: 'direct' HWIO (3, 3, Ci, Co); 'winograd' (36, Ci, Co) or
    'winograd_out_major' (36, Co, Ci) for Winograd F(4x4, 3x3) (see `winograd.conv3x3`).
    """

    fwd: jax.Array
    bwd: jax.Array
    kind: str = "direct"


FROZEN_KINDS = ("direct", "winograd", "winograd_out_major")


def _conv3x3(x: jax.Array, k: jax.Array, kind: str) -> jax.Array:
    if kind == "direct":
        return jax.lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), "SAME", dimension_numbers=_DN)
    return winograd.conv3x3(x, k, out_major=kind == "winograd_out_major")


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def frozen_conv(x: jax.Array, fwd: jax.Array, bwd: jax.Array, kind: str = "direct") -> jax.Array:
    """3x3 'SAME' convolution whose kernel is a constant: the gradient goes to `x` only."""
    return _conv3x3(x, fwd, kind)


def _frozen_conv_fwd(x, fwd, bwd, kind):
    return _conv3x3(x, fwd, kind), bwd


def _frozen_conv_bwd(kind, bwd, g):
    return _conv3x3(g, bwd, kind), None, None


frozen_conv.defvjp(_frozen_conv_fwd, _frozen_conv_bwd)


def resolve_conv_impl(impl: str, dtype=jnp.float32) -> str:
    """'auto' -> 'winograd' for float32 on CPU (XLA:CPU's direct convolutions already run near
    the CPU's peak, so only fewer FLOPs help), 'xla' elsewhere (cuDNN picks its own algorithms)."""
    if impl != "auto":
        return impl
    return "winograd" if jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32 else "xla"


def conv_input_sizes(height: int, width: int, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Spatial size at each named convolution for an (height, width) input (pools floor-halve)."""
    h, w, out = height, width, {}
    wanted = set(names)
    for name in layer_order():
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        elif name in wanted:
            out[name] = (h, w)
    return out


def frozen_kernels(vgg: VGG19, layers: Iterable[str],
                   input_shape: tuple[int, int, int] | None = None) -> dict[str, FrozenConv] | None:
    """Precompute the frozen-conv kernels of every convolution up to the deepest of `layers`.

    Computed once per loss network and passed to `VGG19.__call__(..., frozen=...)` with the other
    constants of a step. `vgg.conv_impl` picks the form: 'xla' -> None (plain convolutions,
    autodiff), 'flipped' -> direct convolutions with a precomputed input-gradient kernel,
    'winograd' -> Winograd F(4x4, 3x3) for the layers with 128 or more channels (it loses to
    the direct convolution on the full-resolution 64-channel layers) and 'flipped' for the rest.
    `input_shape` (batch, height, width) of the images the step will see, when known, lets
    layers with few tiles use the output-major Winograd layout (faster there; any shape still
    computes the same convolution). Winograd weights take 4x the memory of the kernels;
    transformed kernels are cached per network and layout.
    """
    impl = resolve_conv_impl(vgg.conv_impl, vgg.dtype)
    if impl == "xla":
        return None
    order = layer_order()
    names = tuple(n for n in order[: max(order.index(n) for n in layers) + 1] if n.startswith("conv"))
    sizes = conv_input_sizes(*input_shape[1:], names) if input_shape is not None else {}
    cache = _FROZEN_CACHE.setdefault(vgg, {})
    out = {}
    for name in names:
        w = vgg.convs[name].kernel[...]
        kind = "direct"
        if impl == "winograd" and max(w.shape[2:]) >= WINOGRAD_MIN_CHANNELS:
            few = name in sizes and winograd.tile_count(input_shape[0], *sizes[name]) < winograd.OUT_MAJOR_MAX_TILES
            kind = "winograd_out_major" if few else "winograd"
        hit = cache.get(name)
        if hit is not None and hit[0] is w and hit[1].kind == kind:  # same weights and layout: reuse
            out[name] = hit[1]
            continue
        k = np.asarray(w, np.float32)
        k_t = np.swapaxes(k[::-1, ::-1], 2, 3)  # the input gradient's kernel
        if kind != "direct":
            k, k_t = (winograd.kernel_transform(a, out_major=kind == "winograd_out_major") for a in (k, k_t))
        out[name] = FrozenConv(jnp.asarray(k), jnp.asarray(np.ascontiguousarray(k_t)), kind)
        cache[name] = (w, out[name])  # one layout per layer is kept: memory stays bounded
    return out


_FROZEN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pyramid levels share one


def read_h5_weights(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{conv{b}_{c}: (kernel HWIO, bias)} from the Keras 'notop' HDF5 file."""
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for b, n in enumerate(BLOCKS, 1):
                for c in range(1, n + 1):
                    g = f[f"block{b}_conv{c}"]
                    out[f"conv{b}_{c}"] = (np.asarray(g[f"block{b}_conv{c}_W_1:0"], np.float32),
                                           np.asarray(g[f"block{b}_conv{c}_b_1:0"], np.float32))
    except (OSError, KeyError) as e:
        raise NstjaxError(f"VGG-19 weights {str(path)!r}: not a Keras VGG-19 notop HDF5 file ({e})") from None
    return out


def load_vgg19(weights: str | None = None, *, pooling: str = "max", dtype=jnp.float32,
               assets_dir: str | None = None, conv_impl: str = "auto") -> VGG19:
    """VGG-19 with the ImageNet weights, found via nstjax.assets (path, assets dir, cache, download)."""
    path = assets.resolve(weights or assets.VGG19_NAME, assets=assets_dir, what="VGG-19 weights")
    params = read_h5_weights(path)
    # Build abstractly (no 20M-parameter random init), then fill in the real weights.
    model = nnx.eval_shape(lambda: VGG19(pooling=pooling, dtype=dtype, conv_impl=conv_impl))
    for name, (w, bias) in params.items():
        conv = model.convs[name]
        if conv.kernel.shape != w.shape:
            raise NstjaxError(f"VGG-19 weights {str(path)!r}: {name} has shape {w.shape}, "
                              f"expected {conv.kernel.shape}")
        conv.kernel.set_value(jnp.asarray(w))
        conv.bias.set_value(jnp.asarray(bias))
    return model
