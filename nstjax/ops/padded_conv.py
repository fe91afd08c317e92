"""The feed-forward networks' convolution, formulated for the backend it runs on.

The networks reflection-pad and then convolve without padding (VALID), which XLA:CPU runs
slowly in both directions (README, "How nstjax got there"). On CPU:

* forward: the same convolution asked for *with* zero padding, cropped back; Winograd
  F(4x4, 3x3) for 3x3 float32 convolutions with many channels (the residual blocks) and
  F(5x5, 2x2) for the upsampling convolutions' phases; for inputs with few channels (the RGB
  image), the width folded into channels first (`_width_blocked`); for few output channels, the
  kernel columns as channels (`_column_taps_summed`);
* kernel gradient: one matrix product per kernel tap (or per kernel row, where X has at least
  as many channels as dY), except for few output channels, where XLA's own is faster.

On GPUs cuDNN handles VALID convolutions well, so there the plain convolution is used.

These formulations are tuned for executables compiled as inference compiles them
(nstjax/ops/cpu_kernels.py): XLA's own convolutions, YNNPACK's reductions, and the faster
matrix products on this CPU (README, "Inference on CPU").
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nstjax.ops import winograd

Array = jax.Array
_DN = ("NHWC", "HWIO", "NHWC")
_MIN_TAP_OUT = 16   # below this many output channels XLA's weight gradient is faster
_CHUNKS = 16        # row chunks for the per-tap products (parallel work for the CPU threads)
_MAX_BLOCKED_IN = 4  # inputs with at most this many channels (the RGB image) get the width-blocked forward
_WIDTH_BLOCK = 4     # ... with the width folded into channels by blocks of this many pixels
_MAX_COLUMN_TAPS_OUT = 4  # outputs with at most this many channels (the RGB output) ...
_MIN_COLUMN_TAPS_IN = 8  # ... from this many: column taps as channels, then summed
_MIN_WINOGRAD_IN = 128  # float32 3x3 stride-1 convolutions with this many input channels: Winograd
_MIN_WINOGRAD2_IN = 128  # float32 2x2 stride-1 ones (the upsampling convs' phases): Winograd F(5x5, 2x2)


def valid_conv(xp: Array, kernel: Array, stride: int = 1) -> Array:
    """Plain VALID convolution of a padded NHWC input with an HWIO kernel."""
    return lax.conv_general_dilated(xp, kernel, (stride, stride), "VALID", dimension_numbers=_DN)


def _out_size(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1


def _padded_then_cropped(xp: Array, kernel: Array, stride: int) -> Array:
    """valid_conv(xp, kernel, stride), computed as a zero-padded convolution and a crop."""
    kh, kw = kernel.shape[:2]
    oh, ow = _out_size(xp.shape[1], kh, stride), _out_size(xp.shape[2], kw, stride)
    if stride == 1:
        ph, pw = kh // 2, kw // 2
        y = lax.conv_general_dilated(xp, kernel, (1, 1), ((ph, kh - 1 - ph), (pw, kw - 1 - pw)),
                                     dimension_numbers=_DN)
        return y[:, ph:ph + oh, pw:pw + ow]
    y = lax.conv_general_dilated(xp, kernel, (stride, stride), ((0, kh - 1), (0, kw - 1)), dimension_numbers=_DN)
    return y[:, :oh, :ow]


def _width_blocked(xp: Array, kernel: Array, f: int) -> Array:
    """Stride-1 valid_conv(xp, kernel) with the width folded into channels by blocks of `f` px.

    XLA:CPU convolves a 3-channel input far below its matrix-product speed. Reshaping the rows
    into blocks of f pixels ((B, H, W, C) -> (B, H, W / f, f C), free in memory) turns the
    (kh, kw) convolution into a (kh, ceil((f + kw - 1) / f)) convolution from f C to f Cout
    channels, whose kernel holds each output pixel's taps at its offset in the block (zeros
    elsewhere): a few more multiplications, in a shape the CPU runs several times faster.
    """
    b, hp, wp, c = xp.shape
    kh, kw, _, cout = kernel.shape
    oh, ow = hp - kh + 1, wp - kw + 1
    nb, kb = -(-ow // f), -(-(f + kw - 1) // f)  # output blocks; kernel width in blocks
    width = (nb + kb - 1) * f
    xq = jnp.pad(xp, ((0, 0), (0, 0), (0, width - wp), (0, 0))) if width >= wp else xp[:, :, :width]
    # place[u, d, p, j] = 1 where input pixel d of block u meets output pixel p of the block at kernel column j
    u, d, q, j = np.ogrid[:kb, :f, :f, :kw]
    place = jnp.asarray(u * f + d - q == j, kernel.dtype)
    k = jnp.einsum("udpj,ijco->iudcpo", place, kernel).reshape(kh, kb, f * c, f * cout)
    y = _padded_then_cropped(xq.reshape(b, hp, nb + kb - 1, f * c), k, 1)
    return y.reshape(b, oh, nb * f, cout)[:, :, :ow]


def _column_taps_summed(xp: Array, kernel: Array) -> Array:
    """Stride-1 valid_conv(xp, kernel) for few output channels (the RGB output).

    A (kh, kw) convolution to Cout channels is a (kh, 1) convolution to kw Cout channels (every
    kernel column's taps at once), then the sum of those kw column groups, each shifted by its
    column: a shape the CPU's convolution runs near its matrix-product speed, plus one fused pass.
    """
    b, hp, wp, cin = xp.shape
    kh, kw, _, cout = kernel.shape
    oh, ow = hp - kh + 1, wp - kw + 1
    columns = kernel.transpose(0, 2, 1, 3).reshape(kh, 1, cin, kw * cout)
    z = _padded_then_cropped(xp, columns, 1).reshape(b, oh, wp, kw, cout)
    return sum(z[:, :, j:j + ow, j] for j in range(kw))


def _forward(xp: Array, kernel: Array, stride: int) -> Array:
    k, _, cin, _ = kernel.shape
    if stride == 1 and k == 3 and kernel.shape[1] == 3 and cin >= _MIN_WINOGRAD_IN and xp.dtype == jnp.float32:
        return winograd.conv3x3_valid(xp, kernel)
    if stride == 1 and k == 2 and kernel.shape[1] == 2 and cin >= _MIN_WINOGRAD2_IN and xp.dtype == jnp.float32:
        return winograd.conv2x2_valid(xp, kernel)
    if stride == 1 and kernel.shape[2] <= _MAX_BLOCKED_IN and kernel.shape[1] > 1:
        return _width_blocked(xp, kernel, _WIDTH_BLOCK)
    few_out = kernel.shape[3] <= _MAX_COLUMN_TAPS_OUT and cin >= _MIN_COLUMN_TAPS_IN
    if stride == 1 and few_out and kernel.shape[1] > 1:
        return _column_taps_summed(xp, kernel)
    return _padded_then_cropped(xp, kernel, stride)


def _tap_kernel_grad(xp: Array, dy: Array, k: int, stride: int) -> Array:
    """dL/dkernel of valid_conv as one chunked matrix product per kernel tap."""
    b, oh, ow, cout = dy.shape
    cin = xp.shape[-1]
    g = max(d for d in range(1, max(1, _CHUNKS // b) + 1) if oh % d == 0)
    n = b * g
    d = dy.reshape(n, -1, cout)
    taps = []
    for i in range(k):
        for j in range(k):
            xs = lax.slice(xp, (0, i, j, 0), (b, i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1, cin),
                           (1, stride, stride, 1))
            # batched over the chunks, then summed: XLA:CPU runs this much faster than one long-K dot
            part = jnp.einsum("npi,npo->nio", xs.reshape(n, -1, cin), d, preferred_element_type=jnp.float32)
            taps.append(part.sum(0))
    return jnp.stack(taps).reshape(k, k, cin, cout)


def _row_shift_kernel_grad(xp: Array, dy: Array, k: int) -> Array:
    """dL/dkernel of a stride-1 valid_conv with k row slices of X instead of k*k tap slices.

    With dY zero-padded to X's row pitch and flattened, a column offset j is a shift of dY by
    j along the flat axis (the zero columns absorb the wrap-around), so each row offset i is
    one product of X's rows i..i+oh with [dY shifted by 0..k-1]. That copies X k times rather
    than k*k; it pays off when X has at least as many channels as dY (the upsampling convs),
    not for 3-channel inputs.
    """
    b, oh, ow, cout = dy.shape
    _, _, wp, cin = xp.shape
    flat = jnp.pad(dy, ((0, 0), (0, 0), (0, wp - ow), (0, 0))).reshape(b, oh * wp, cout)
    shifted = jnp.concatenate([jnp.pad(flat, ((0, 0), (j, 0), (0, 0)))[:, :oh * wp] for j in range(k)], axis=-1)
    g = max(d for d in range(1, max(1, _CHUNKS // b) + 1) if oh % d == 0)
    n = b * g
    shifted = shifted.reshape(n, -1, k * cout)
    rows = [jnp.einsum("npi,npo->nio", xp[:, i:i + oh].reshape(n, -1, cin), shifted,
                       preferred_element_type=jnp.float32).sum(0) for i in range(k)]
    return jnp.stack(rows).reshape(k, cin, k, cout).transpose(0, 2, 1, 3)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cpu_conv(xp: Array, kernel: Array, stride: int) -> Array:
    return _forward(xp, kernel, stride)


def _cpu_conv_fwd(xp: Array, kernel: Array, stride: int):
    return _forward(xp, kernel, stride), (xp, kernel)


def _cpu_conv_bwd(stride: int, res, dy: Array):
    xp, kernel = res
    k = kernel.shape[0]
    if stride == 1:  # the full correlation with the flipped kernel, again as a padded convolution
        flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
        dxp = lax.conv_general_dilated(dy, flipped, (1, 1), ((k - 1, k - 1), (k - 1, k - 1)), dimension_numbers=_DN)
    else:
        dxp = jax.vjp(lambda z: _padded_then_cropped(z, kernel, stride), xp)[1](dy)[0]
    cin, cout = kernel.shape[2:]
    if stride == 1 and _MIN_TAP_OUT <= cout <= cin:
        dk = _row_shift_kernel_grad(xp, dy, k)
    elif cout >= _MIN_TAP_OUT:
        dk = _tap_kernel_grad(xp, dy, k, stride)
    else:
        dk = jax.vjp(lambda w: valid_conv(xp, w, stride), kernel)[1](dy)[0]
    return dxp, dk.astype(kernel.dtype)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def padded_conv(xp: Array, kernel: Array, stride: int = 1) -> Array:
    """VALID convolution of an already padded input, in the backend's fastest formulation."""
    if jax.default_backend() == "cpu":
        return _cpu_conv(xp, kernel, stride)
    return valid_conv(xp, kernel, stride)
