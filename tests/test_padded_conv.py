"""padded_conv (the networks' CPU convolution) equals XLA's VALID convolution, values and grads.

The CPU formulation computes a zero-padded convolution and crops it (Winograd for many
channels, width-blocked for the RGB input, kernel columns as channels for the RGB output), and its own kernel gradient (one product per
tap); these tests pin it to the textbook VALID convolution for the shapes the networks use:
3x3 and 9x9 kernels, strides 1 and 2, odd sizes, few and many input and output channels (the
forward and kernel-gradient paths), float32 and bfloat16. Also the upsampling convolution,
computed at the input's resolution (nstjax/ops/upsample_conv.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstjax.networks.johnson import reflect_pad, upsample_nearest2x
from nstjax.ops.padded_conv import _cpu_conv, padded_conv, valid_conv
from nstjax.ops.upsample_conv import upsample2x_conv3x3

CASES = [  # (cin, cout, kernel, stride, height, width)
    (3, 16, 9, 1, 21, 17),
    (16, 3, 9, 1, 20, 24),
    (8, 16, 3, 2, 18, 14),
    (16, 32, 3, 2, 13, 11),
    (32, 32, 3, 1, 12, 9),
    (32, 16, 3, 1, 15, 8),
    (16, 16, 5, 1, 11, 13),
    (4, 5, 3, 1, 7, 10),
    (3, 8, 9, 1, 9, 30),  # width-blocked: output width not a multiple of the block
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


def _rel_err(got, want):
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


@pytest.mark.parametrize("k,h,w", [(3, 16, 16), (3, 13, 10), (3, 3, 7), (2, 12, 9), (2, 5, 5), (2, 1, 3)])
def test_winograd_forward_matches_valid_conv(k, h, w):
    """128+ input channels, stride 1, float32: the forward is Winograd F(4x4, 3x3) for 3x3 and
    F(5x5, 2x2) for 2x2 kernels (rounds ~1e-5 relative), the gradients are the direct ones."""
    xp, kernel, kd = _inputs(128, 64, k, h + k - 1, w + k - 1)
    assert "dot_general" in str(jax.make_jaxpr(_cpu_conv, static_argnums=2)(xp, kernel, 1))
    ref = valid_conv(xp, kernel)
    assert _rel_err(jax.jit(_cpu_conv, static_argnums=2)(xp, kernel, 1), ref) < 2e-5
    dy = jax.random.normal(kd, ref.shape)
    want = jax.vjp(valid_conv, xp, kernel)[1](dy)
    got = jax.jit(lambda a, b, d: jax.vjp(lambda x, y: _cpu_conv(x, y, 1), a, b)[1](d))(xp, kernel, dy)
    for g, r in zip(got, want):
        assert _rel_err(g, r) < 2e-5


@pytest.mark.parametrize("cin,cout,h,w", [(8, 4, 5, 7), (16, 8, 1, 3), (64, 32, 6, 6), (128, 16, 7, 4)])
def test_upsample_conv_at_input_resolution_matches_upsample_pad_conv(cin, cout, h, w):
    x, kernel, kd = _inputs(cin, cout, 3, h, w, seed=cin)

    def reference(x, k):
        return valid_conv(reflect_pad(upsample_nearest2x(x), 1), k)

    def fast(x, k):
        return upsample2x_conv3x3(x, k, padded_conv)

    ref = reference(x, kernel)
    out = jax.jit(fast)(x, kernel)
    assert out.shape == ref.shape == (2, 2 * h, 2 * w, cout)
    assert _rel_err(out, ref) < 1e-5
    dy = jax.random.normal(kd, ref.shape)
    want = jax.vjp(reference, x, kernel)[1](dy)
    got = jax.jit(lambda a, b, d: jax.vjp(fast, a, b)[1](d))(x, kernel, dy)
    for g, r in zip(got, want):
        assert _rel_err(g, r) < 2e-5


def test_padded_conv_uses_the_cpu_formulation_on_cpu():
    assert jax.default_backend() == "cpu"
    xp, kernel, _ = _inputs(16, 8, 9, 20, 24)
    jaxpr = str(jax.make_jaxpr(padded_conv)(xp, kernel))
    assert "custom_vjp" in jaxpr and "padding=((4, 4), (4, 4))" in jaxpr
    xp, kernel, _ = _inputs(16, 3, 9, 20, 24)  # the RGB output: a 9x1 convolution to 9 x 3 channels
    jaxpr = str(jax.make_jaxpr(padded_conv)(xp, kernel))
    assert "custom_vjp" in jaxpr and "padding=((4, 4), (0, 0))" in jaxpr
    xp, kernel, _ = _inputs(3, 16, 9, 21, 20)  # the RGB input: 4-pixel blocks, a 9x3 kernel of blocks
    jaxpr = str(jax.make_jaxpr(padded_conv)(xp, kernel))
    assert "custom_vjp" in jaxpr and "padding=((4, 4), (1, 1))" in jaxpr


def test_inference_compiles_the_network_with_xlas_own_convolutions():
    """Stylizer compiles with cpu_kernels.forward_options() (YNNPACK for reductions and, where
    faster, matrix products): its convolutions stay XLA instructions, and its output equals the
    network compiled with XLA's defaults."""
    from flax import nnx

    from nstjax import trees
    from nstjax.networks import build_network
    from nstjax.networks.johnson import JohnsonConfig
    from nstjax.serving.stylizer import Stylizer, runner_for

    runner = runner_for(JohnsonConfig(width=0.75, num_residual=1))
    params = trees.flatten(nnx.split(build_network(runner.config, rngs=nnx.Rngs(3)), nnx.Param)[1],
                           drop_variable_value=True)
    stylizer = Stylizer(runner.serve, params, meta={}, backend="params")
    x = np.asarray(jax.random.uniform(jax.random.key(1), (1, 40, 36, 3)))
    entry = stylizer.compile(x.shape).as_text().split("ENTRY")[1]
    assert "convolution(" in entry  # an XLA convolution, not one inside a YNNPACK fusion
    want = jax.jit(runner.apply)(params, x)
    assert _rel_err(jnp.asarray(stylizer(x)), want) < 1e-5
