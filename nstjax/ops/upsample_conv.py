"""Nearest x2 upsample + reflection pad 1 + 3x3 VALID conv, computed at the input's resolution.

After a nearest x2 upsample every 2x2 block of the image holds one input pixel, so each of the
four output phases (row parity a, column parity b) sees only 2x2 distinct input pixels through
the 3x3 kernel: a 2x2 convolution whose taps are sums of kernel taps. Reflecting the upsampled
image by 1 px repeats its edge pixel, i.e. it equals the input edge-padded by 1 and then
upsampled (cropped by 1). So

    valid_conv(reflect_pad(upsample2x(x), 1), w)[2i + a, 2j + b]
        = sum_{p, q in {0, 1}} K_ab[p, q] . edge_pad(x, 1)[i + a + p, j + b + q]

with K_ab = R_a w R_b^T, R_0 = [[1, 0, 0], [0, 1, 1]], R_1 = [[1, 1, 0], [0, 0, 1]]. All four
phases are one 2x2 convolution with 4x the output channels, evaluated on the (H+1, W+1) grid
and interleaved: 4 taps instead of 9 per output, no upsampled image in memory, and the same
numbers up to float rounding (the summed taps are added before instead of after multiplying).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# R[a, p, i]: kernel row i contributes to the 2x2 tap p of output phase a.
_R = np.array([[[1, 0, 0], [0, 1, 1]],
               [[1, 1, 0], [0, 0, 1]]], np.float32)


def phase_kernel(kernel: Array) -> Array:
    """(3, 3, Cin, Cout) kernel -> (2, 2, Cin, 4 * Cout) kernel of the four phases (a, b, Cout)."""
    _, _, cin, cout = kernel.shape
    r = jnp.asarray(_R, kernel.dtype)
    k = jnp.einsum("api,bqj,ijco->pqcabo", r, r, kernel)
    return k.reshape(2, 2, cin, 4 * cout)


def upsample2x_conv3x3(x: Array, kernel: Array, conv: Callable[[Array, Array], Array]) -> Array:
    """valid_conv(reflect_pad(upsample_nearest2x(x), 1), kernel) for NHWC `x`, (3, 3, Cin, Cout) kernel.

    `conv(padded, kernel)` is the VALID convolution to use for the 2x2 phase convolution.
    """
    b, h, w, _ = x.shape
    cout = kernel.shape[-1]
    xe = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    z = conv(xe, phase_kernel(kernel)).reshape(b, h + 1, w + 1, 2, 2, cout)
    # Phase (a, b) of output pixel (i, j) sits at z[i + a, j + b, a, b].
    rows = [jnp.stack([z[:, a:a + h, c:c + w, a, c] for c in range(2)], axis=3) for a in range(2)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)
