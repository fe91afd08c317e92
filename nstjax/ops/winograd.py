"""3x3 and 2x2 convolutions with Winograd's minimal filtering F(4x4, 3x3) / F(5x5, 2x2) (Lavin & Gray 2016).

Each 4x4 output tile comes from a 6x6 input tile: V = B^T d B, M = V * U summed over input
channels (36 independent GEMMs of (tiles x Cin) @ (Cin x Cout)), Y = A^T M A, with the kernel
pre-transformed once as U = G g G^T. That is 36 multiplies per 16 outputs instead of 144:
4x fewer FLOPs than a direct convolution, which is what beats XLA:CPU's direct convolutions
(already near the CPU's peak) on the VGG loss network. The transforms are sums of strided
slices that XLA fuses; relative error against the direct convolution is ~1e-5 in float32.

F(5x5, 2x2) interpolates at the same points, so it shares B^T (6x6 input tiles) and needs 36
multiplies per 25 outputs instead of 100; it runs the networks' upsampling convolutions, which
are 2x2 convolutions at the input's resolution (nstjax/ops/upsample_conv.py).

Frozen convolutions (the VGG loss network) transform their kernels once on the host
(`nstjax.vgg.frozen_kernels`); trainable ones (the networks) transform them in the graph.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# F(4x4, 3x3) matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks").
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)
# F(5x5, 2x2): the same six points (0, 1, -1, 2, -2, infinity), hence the same BT.
G2 = np.array([[1 / 4, 0],
               [-1 / 6, -1 / 6],
               [-1 / 6, 1 / 6],
               [1 / 24, 1 / 12],
               [1 / 24, -1 / 12],
               [0, 1]], np.float64)
AT2 = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 0],
                [0, 1, 1, 16, 16, 1]], np.float64)
TILE = 4  # output tile side; input tiles are TILE + 2
TILE2 = 5  # ... of F(5x5, 2x2); input tiles are TILE2 + 1
# Below this many tiles per product (deep layers of small images, e.g. conv4/conv5 of a 256 px
# Gatys image: 48 and 12 tiles), the kernel is stored output-major and goes first in the product.
OUT_MAJOR_MAX_TILES = 128


def tile_count(batch: int, height: int, width: int) -> int:
    """Number of 4x4 output tiles, i.e. the rows of each of the 36 products."""
    return batch * -(-height // TILE) * -(-width // TILE)


def kernel_transform(w: np.ndarray, out_major: bool = False) -> np.ndarray:
    """(3, 3, Cin, Cout) HWIO kernel -> Winograd-domain kernel U = G g G^T, (36, Cin, Cout), or
    (36, Cout, Cin) with `out_major` (see `conv3x3`).

    On the host in NumPy, once per loss network (XLA:CPU compiles the same transform slowly).
    """
    w = np.asarray(w, np.float32)
    ci, co = w.shape[2:]
    g = G.astype(np.float32)
    t = (g @ w.reshape(3, -1)).reshape(6, 3, ci * co)  # G applied to the kernel rows
    u = np.matmul(g[None], t).reshape(36, ci, co)     # ... and to its columns
    return np.ascontiguousarray(np.swapaxes(u, 1, 2)) if out_major else u


def _combine(mat: np.ndarray, xs: list[jax.Array]) -> list[jax.Array]:
    """Rows of `mat` applied to the list `xs` as explicit sums (XLA fuses them; no tiny dots)."""
    out = []
    for row in mat:
        acc = None
        for coef, x in zip(row, xs):
            if coef == 0:
                continue
            term = x if coef == 1 else -x if coef == -1 else x * np.float32(coef)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def conv3x3(x: jax.Array, u: jax.Array, out_major: bool = False) -> jax.Array:
    """Stride-1 'SAME' 3x3 convolution of NHWC `x` with a transformed kernel `u`.

    Equal (to float rounding) to lax.conv_general_dilated(x, g, (1, 1), 'SAME') where
    u = kernel_transform(g, out_major). Any H and W: the image is zero-padded to whole tiles
    and cropped. `out_major` computes the 36 products as U^T V^T, kernel first: with few tiles
    the (Cout x Cin) kernels are the large operand, and XLA:CPU's product then repacks only the
    small tile matrices instead of 36 kernels per call (faster below OUT_MAJOR_MAX_TILES; README).
    """
    _, h, w, _ = x.shape
    nh, nw = -(-h // TILE), -(-w // TILE)
    xp = jnp.pad(x, ((0, 0), (1, TILE * nh + 1 - h), (1, TILE * nw + 1 - w), (0, 0)))
    return _tiled(xp, u, h, w, out_major)


def conv3x3_valid(xp: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID 3x3 convolution of an already padded NHWC `xp` with an HWIO `kernel`.

    For trainable kernels: the kernel transform runs in the graph (`kernel_transform_traced`).
    """
    _, hp, wp, _ = xp.shape
    h, w = hp - 2, wp - 2
    nh, nw = -(-h // TILE), -(-w // TILE)
    xq = jnp.pad(xp, ((0, 0), (0, TILE * nh - h), (0, TILE * nw - w), (0, 0)))
    return _tiled(xq, kernel_transform_traced(kernel), h, w, False)


def conv2x2_valid(xp: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID 2x2 convolution of NHWC `xp` with a (2, 2, Cin, Cout) kernel, F(5x5, 2x2)."""
    _, hp, wp, _ = xp.shape
    h, w = hp - 1, wp - 1
    nh, nw = -(-h // TILE2), -(-w // TILE2)
    xq = jnp.pad(xp, ((0, 0), (0, TILE2 * nh - h), (0, TILE2 * nw - w), (0, 0)))
    return _tiled(xq, kernel_transform_traced(kernel, G2), h, w, False, TILE2, AT2)


def kernel_transform_traced(w: jax.Array, g: np.ndarray = G) -> jax.Array:
    """`kernel_transform` in the graph: G g G^T as two rounds of fused sums (no K=3 products)."""
    k = g.shape[1]
    rows = _combine(g, [w[i] for i in range(k)])                    # 6 x (k, Cin, Cout)
    u = [t for r in rows for t in _combine(g, [r[j] for j in range(k)])]  # 36 x (Cin, Cout)
    return jnp.stack(u)


def _tiled(xp: jax.Array, u: jax.Array, h: int, w: int, out_major: bool,
           tile: int = TILE, at: np.ndarray = AT) -> jax.Array:
    """The Winograd convolution of `xp`, zero-padded to whole 6x6 input tiles at a stride of
    `tile` (output tiles of `tile` x `tile`, output transform `at`), cropped to (h, w)."""
    b, c = xp.shape[0], xp.shape[-1]
    halo = 6 - tile
    nh, nw = (xp.shape[1] - halo) // tile, (xp.shape[2] - halo) // tile
    # Two separable stages, each one fused loop writing a stacked array (one 36-way stack was
    # 1.5-2.5x slower to run and 3x slower to compile).
    r = jnp.stack(_combine(BT, [xp[:, i:i + tile * nh:tile] for i in range(6)]))      # (6, b, nh, W+halo, c)
    v = jnp.stack(_combine(BT, [r[:, :, :, j:j + tile * nw:tile] for j in range(6)]), axis=1)
    v, u = v.reshape(36, b * nh * nw, c), u.astype(xp.dtype)
    if out_major:
        # The output transform reads the (36, Cout, tiles) product as it is: a transpose after
        # the product would let XLA swap the operands back.
        m = jnp.einsum("koc,kpc->kop", u, v).reshape(6, 6, -1, b, nh, nw)
        r = jnp.stack(_combine(at, [m[i] for i in range(6)]), axis=4)                 # (6, o, b, nh, t, nw)
        y = jnp.stack(_combine(at, [r[j] for j in range(6)]), axis=5)                 # (o, b, nh, t, nw, t)
        y = jnp.moveaxis(y, 0, -1)
    else:
        m = jnp.einsum("kpc,kco->kpo", v, u).reshape(6, 6, b, nh, nw, -1)
        r = jnp.stack(_combine(at, [m[i] for i in range(6)]), axis=3)                 # (6, b, nh, t, nw, o)
        y = jnp.stack(_combine(at, [r[j] for j in range(6)]), axis=4)                 # (b, nh, t, nw, t, o)
    return y.reshape(b, tile * nh, tile * nw, -1)[:, :h, :w]
