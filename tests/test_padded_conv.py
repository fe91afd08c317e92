"""padded_conv (the networks' CPU convolution) equals XLA's VALID convolution, values and grads.

The CPU formulation computes a zero-padded convolution and crops it, and its own kernel
gradient (one product per tap); these tests pin it to the textbook VALID convolution for the
shapes the networks use: 3x3 and 9x9 kernels, strides 1 and 2, odd sizes, few and many output
channels (the three kernel-gradient paths), float32 and bfloat16.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax.ops.padded_conv import _cpu_conv, padded_conv, valid_conv

CASES = [  # (cin, cout, kernel, stride, height, width)
    (3, 16, 9, 1, 21, 17),
    (16, 3, 9, 1, 20, 24),
    (8, 16, 3, 2, 18, 14),
    (16, 32, 3, 2, 13, 11),
    (32, 32, 3, 1, 12, 9),
    (32, 16, 3, 1, 15, 8),
    (16, 16, 5, 1, 11, 13),
    (4, 5, 3, 1, 7, 10),
]


def _inputs(cin, cout, k, h, w, seed=0):
    kx, kw, kd = jax.random.split(jax.random.key(seed), 3)
    xp = jax.random.normal(kx, (2, h, w, cin))
    kernel = jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin)
    return xp, kernel, kd


@pytest.mark.parametrize("cin,cout,k,stride,h,w", CASES)
def test_values_and_gradients_match_valid_conv(cin, cout, k, stride, h, w):
    xp, kernel, kd = _inputs(cin, cout, k, h, w)
    ref = valid_conv(xp, kernel, stride)
    out = jax.jit(_cpu_conv, static_argnums=2)(xp, kernel, stride)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    dy = jax.random.normal(kd, ref.shape)
    want = jax.vjp(lambda a, b: valid_conv(a, b, stride), xp, kernel)[1](dy)
    got = jax.jit(lambda a, b, d: jax.vjp(lambda x, y: _cpu_conv(x, y, stride), a, b)[1](d))(xp, kernel, dy)
    for g, r, name in zip(got, want, ("input", "kernel")):
        scale = float(jnp.max(jnp.abs(r)))
        assert scale > 0
        np.testing.assert_allclose(g / scale, r / scale, atol=2e-5, err_msg=f"{name} gradient")


def test_bfloat16_kernel_gradient_stays_close():
    xp, kernel, kd = _inputs(16, 32, 3, 14, 14)
    dy = jax.random.normal(kd, (2, 12, 12, 32))
    want = jax.vjp(lambda b: valid_conv(xp, b), kernel)[1](dy)[0]
    got = jax.vjp(lambda b: _cpu_conv(xp.astype(jnp.bfloat16), b.astype(jnp.bfloat16), 1), kernel)[1](
        dy.astype(jnp.bfloat16))[0]
    assert got.dtype == jnp.float32  # cast back to the parameter's dtype
    assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 2e-2


def test_padded_conv_uses_the_cpu_formulation_on_cpu():
    xp, kernel, _ = _inputs(3, 16, 9, 21, 17)
    assert jax.default_backend() == "cpu"
    jaxpr = str(jax.make_jaxpr(padded_conv)(xp, kernel))
    assert "custom_vjp" in jaxpr and "padding=((4, 4), (4, 4))" in jaxpr
