"""Tests for the feed-forward stylization networks (nstjax.networks).

Kept CPU-cheap: forward/grad tests use a narrow, shallow net (width 0.125, 1 residual block)
and one shared jitted forward so equal shapes compile once; parameter counts use
``nnx.eval_shape`` (no arrays are created).
"""
from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from nstjax import networks
from nstjax.errors import NstjaxError
from nstjax.networks import (
    NETWORKS,
    TransformerNet,
    build_network,
    count_params,
)

SMALL = dict(width=0.125, num_residual=1)
TRACES: collections.Counter[tuple[int, ...]] = collections.Counter()


@jax.jit
def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    """Shared jitted forward; counts traces per input shape (models are pytrees in NNX)."""
    TRACES[x.shape] += 1
    return model(x)


def _abstract(**kw: Any) -> nnx.Module:
    return nnx.eval_shape(lambda: TransformerNet(rngs=nnx.Rngs(0), **kw))


def _image(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


@pytest.fixture(scope="module")
def small() -> TransformerNet:
    return TransformerNet(rngs=nnx.Rngs(0), **SMALL)


def _torch_transformer_net_params(c: tuple[int, int, int] = (32, 64, 128), n_res: int = 5) -> int:
    """Layer-by-layer count of pytorch/examples TransformerNet (convs with bias + IN affine)."""

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    def inorm(ch: int) -> int:
        return 2 * ch

    c1, c2, c3 = c
    total = conv(3, c1, 9) + inorm(c1) + conv(c1, c2, 3) + inorm(c2) + conv(c2, c3, 3) + inorm(c3)
    total += n_res * 2 * (conv(c3, c3, 3) + inorm(c3))
    total += conv(c3, c2, 3) + inorm(c2) + conv(c2, c1, 3) + inorm(c1) + conv(c1, 3, 9)
    return total


# --- parameters ---------------------------------------------------------------------------


def test_param_count_matches_pytorch_examples() -> None:
    assert _torch_transformer_net_params() == 1_679_235
    assert count_params(_abstract()) == 1_679_235


def test_width_scales_channels_and_params() -> None:
    full, half, quarter = _abstract(), _abstract(width=0.5), _abstract(width=0.25)
    assert full.conv1.conv.kernel.shape == (9, 9, 3, 32)
    assert half.conv1.conv.kernel.shape == (9, 9, 3, 16)
    assert half.conv3.conv.kernel.shape == (3, 3, 32, 64)
    assert quarter.conv3.conv.kernel.shape == (3, 3, 16, 32)
    assert half.deconv3.conv.kernel.shape == (9, 9, 16, 3)
    assert count_params(half) == _torch_transformer_net_params((16, 32, 64))
    ratio = count_params(half) / count_params(full)
    assert 0.24 < ratio < 0.26, ratio
    # Rounding and the floor of 1 channel.
    assert _abstract(width=0.001).conv1.conv.kernel.shape[-1] == 1


def test_num_residual_and_param_dtype() -> None:
    m = _abstract(num_residual=2, dtype=jnp.bfloat16)
    assert len(m.res) == 2
    assert count_params(m) == _torch_transformer_net_params(n_res=2)
    dtypes = {p.dtype for p in jax.tree.leaves(nnx.state(m, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_build_network_from_hydra_config() -> None:
    cfg = OmegaConf.load(networks.__file__.replace("nstjax/networks.py", "conf/model/johnson.yaml"))
    assert dict(cfg) == {"name": "johnson", "width": 1.0, "num_residual": 5, "dtype": "float32"}
    assert set(NETWORKS) >= {"johnson"}
    cfg.width, cfg.num_residual, cfg.dtype = 0.25, 2, "bfloat16"
    m = nnx.eval_shape(lambda: build_network(cfg, rngs=nnx.Rngs(0)))
    assert isinstance(m, TransformerNet)
    assert m.conv1.conv.kernel.shape == (9, 9, 3, 8) and len(m.res) == 2
    assert m.dtype == jnp.bfloat16
    with pytest.raises(NstjaxError, match="unknown model.name"):
        build_network({"name": "nope"}, rngs=nnx.Rngs(0))
    with pytest.raises(NstjaxError, match="dtype"):
        build_network({"name": "johnson", "dtype": "float64x"}, rngs=nnx.Rngs(0))
    with pytest.raises(NstjaxError, match="width"):
        build_network({"name": "johnson", "width": 0}, rngs=nnx.Rngs(0))


# --- forward ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 64, 64, 3), (2, 67, 45, 3), (1, 33, 100, 3)])
def test_output_shape_equals_input_shape(small: TransformerNet, shape: tuple[int, ...]) -> None:
    y = forward(small, _image(shape))
    assert y.shape == shape
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))


def test_initial_output_in_image_range(small: TransformerNet) -> None:
    y = np.asarray(forward(small, _image((1, 64, 64, 3))))
    assert 0.3 < y.mean() < 0.7 and 0.02 < y.std() < 0.4, (y.mean(), y.std())


def _randomize(model: nnx.Module, seed: int) -> nnx.Module:
    """Same graph, random values for every param (incl. biases and IN affine), 0.3 std."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _spatial_spread(y: jax.Array) -> float:
    y = np.asarray(y, np.float64)
    return float(np.max(np.ptp(y.reshape(y.shape[0], -1, y.shape[-1]), axis=1)))


def test_constant_image_gives_constant_output(small: TransformerNet) -> None:
    """Reflection padding of a constant is constant, so every conv output stays constant and
    instance norm maps it to its bias: the output must be spatially constant. Random biases and
    IN affine params make every layer's padding matter, not just the first conv's."""
    x = jnp.full((1, 33, 100, 3), 0.37, jnp.float32)  # odd/non-multiple-of-4: also pad-to-4
    assert _spatial_spread(forward(small, x)) < 1e-4
    assert _spatial_spread(forward(_randomize(small, 1), x)) < 1e-4


def test_constant_image_check_catches_zero_padding(
    small: TransformerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The constant-image test is not vacuous: zero padding makes the output vary at borders."""

    def zero_pad(x: jax.Array, pad: int) -> jax.Array:
        return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    monkeypatch.setattr(networks, "reflect_pad", zero_pad)
    x = jnp.full((1, 33, 100, 3), 0.37, jnp.float32)
    y = jax.jit(lambda m, x: m(x))(_randomize(small, 1), x)  # fresh jit: retrace with patch
    assert _spatial_spread(y) > 1e-2


def test_bfloat16_compute_close_to_float32(small: TransformerNet) -> None:
    graphdef, state = nnx.split(small)
    bf16 = TransformerNet(rngs=nnx.Rngs(0), dtype=jnp.bfloat16, **SMALL)
    nnx.update(bf16, state)  # identical float32 params, bfloat16 compute
    assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
    x = _image((1, 33, 100, 3), seed=3)
    y32, y16 = forward(small, x), forward(bf16, x)
    assert y16.dtype == jnp.float32
    err = np.abs(np.asarray(y16) - np.asarray(y32))
    assert err.max() > 0  # bf16 really was used
    assert err.mean() < 0.02 and err.max() < 0.15, (err.mean(), err.max())


# Biases whose gradient is identically zero: a per-channel constant added before an instance
# norm is removed by its mean subtraction. That is every conv bias except the last conv's, and
# each residual block's second IN bias (added to the residual stream, it only reaches
# reflection-padded convs that feed an IN). pytorch/examples has them too; kept for parity.
def _redundant(path: str) -> bool:
    is_conv_bias = path.endswith("['conv']['bias']") and not path.startswith("['deconv3']")
    return is_conv_bias or (path.startswith("['res']") and path.endswith("['in2']['bias']"))


def test_gradients_reach_every_parameter(small: TransformerNet) -> None:
    model = nnx.clone(small)
    model = _randomize(model, 2)
    x = _image((1, 33, 100, 3), seed=4)
    target = _image((1, 33, 100, 3), seed=5)

    def loss(m: nnx.Module) -> jax.Array:
        return jnp.mean((m(x) - target) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model)
    flat = {jax.tree_util.keystr(p): np.abs(np.asarray(g)).max()
            for p, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))}
    assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    live = {k: v for k, v in flat.items() if not _redundant(k)}
    dead = {k: v for k, v in flat.items() if _redundant(k)}
    assert len(dead) == 6 and len(live) == len(flat) - 6
    scale = min(live.values())
    assert scale > 1e-5, live
    assert all(np.isfinite(v) for v in flat.values())
    assert max(dead.values()) < 1e-3 * scale, dead


def test_jit_does_not_retrace_for_same_shape(small: TransformerNet) -> None:
    """Split graphdef/state jit: repeated calls and new param values reuse one compilation."""
    graphdef, state = nnx.split(small)
    traces = collections.Counter()

    @jax.jit
    def apply(state: nnx.State, x: jax.Array) -> jax.Array:
        traces["n"] += 1
        return nnx.merge(graphdef, state)(x)

    x = _image((1, 64, 64, 3))
    y0 = apply(state, x)
    apply(state, x + 0.1)
    _, state2 = nnx.split(_randomize(small, 3))
    y2 = apply(state2, x)
    assert traces["n"] == 1
    assert not np.allclose(y0, y2)
    np.testing.assert_allclose(y0, forward(small, x), atol=1e-5)
