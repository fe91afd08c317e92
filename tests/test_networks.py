"""Tests for the feed-forward stylization networks (nstjax.networks).

Kept CPU-cheap: forward/grad tests use a narrow, shallow net (width 0.125, 1 residual block)
and one shared jitted forward so equal shapes compile once; parameter counts use
``nnx.eval_shape`` (no arrays are created).
"""
from __future__ import annotations

import collections
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from nstjax.networks import johnson
from nstjax.ops.padded_conv import valid_conv
from nstjax.errors import NstjaxError
from nstjax.networks import (
    NETWORKS,
    TransformerNet,
    build_network,
    count_params,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(width=0.125, num_residual=1)
SHAPE = (2, 67, 45, 3)  # odd, not a multiple of 4: exercises pad-to-4 and crop
TRACES: collections.Counter[tuple[Any, ...]] = collections.Counter()  # (graphdef, shape)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    """The split graphdef/state jit pattern: graphdef static, params traced."""
    return nnx.merge(graphdef, state)(x)


@functools.partial(jax.jit, static_argnums=0)
def _step(
    graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, target: jax.Array
) -> tuple[jax.Array, nnx.State]:
    """Output and d(MSE to target)/d(params) in one program, so the float32 forward and
    backward compile once and are shared by every float32 test (CPU compile time dominates)."""
    TRACES[graphdef, x.shape] += 1

    def loss(params: nnx.State) -> tuple[jax.Array, jax.Array]:
        y = nnx.merge(graphdef, params)(x)
        return jnp.mean((y - target) ** 2), y

    grads, y = jax.grad(loss, has_aux=True)(state)
    return y, grads


def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    """Forward only (one compile per graph and input shape across all tests)."""
    return _apply(*nnx.split(model), x)


def forward_and_grad(model: nnx.Module, x: jax.Array, target: jax.Array | None = None):
    graphdef, state = nnx.split(model, nnx.Param)
    return _step(graphdef, state, x, jnp.zeros_like(x) if target is None else target)


def _abstract(**kw: Any) -> nnx.Module:
    return nnx.eval_shape(lambda: TransformerNet(rngs=nnx.Rngs(0), **kw))


def _image(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    """numpy RNG: jax.random compiles a sampler per shape, which is slow on a busy CPU."""
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


@pytest.fixture(scope="module")
def small() -> TransformerNet:
    model = build_network(dict(name="johnson", dtype="float32", **SMALL), rngs=nnx.Rngs(0))
    assert isinstance(model, TransformerNet)
    return model


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
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "johnson.yaml")
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


@pytest.mark.parametrize("shape", [(1, 64, 64, 3), (2, 67, 45, 3), (1, 33, 100, 3), (1, 1, 5, 3)])
def test_output_shape_equals_input_shape(small: TransformerNet, shape: tuple[int, ...]) -> None:
    # Output shapes are fixed at trace time, so eval_shape checks pad/crop without compiling.
    out = jax.eval_shape(small, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out.shape == shape and out.dtype == jnp.float32


def test_forward_runs_on_odd_size(small: TransformerNet) -> None:
    y, _ = forward_and_grad(small, _image(SHAPE))
    assert y.shape == SHAPE and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))


def test_odd_size_is_reflect_padded_to_multiple_of_4_then_cropped(small: TransformerNet) -> None:
    """Documented behaviour: 67x45 is processed as a 68x48 reflection-padded image (extra rows
    and columns split between the two borders, the odd one at the bottom/right), then cropped."""
    x = _image(SHAPE)
    padded = jnp.pad(x, ((0, 0), (0, 1), (1, 2), (0, 0)), mode="reflect")
    expected = forward(small, padded)[:, 0:67, 1:46, :]
    np.testing.assert_allclose(forward_and_grad(small, x)[0], expected, atol=1e-5, rtol=0)


def test_cpu_formulations_equal_the_plain_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """At full width every CPU formulation runs (Winograd residual convs, the width-blocked RGB
    conv, upsampling convs at the input's resolution); the plain VALID convolutions after
    upsample + reflection pad give the same output up to float rounding."""
    model = _randomize(TransformerNet(rngs=nnx.Rngs(1)), 6)
    x = _image((1, 34, 30, 3), seed=8)
    fast = jax.jit(lambda m, v: m(v))(model, x)
    monkeypatch.setattr(johnson, "padded_conv", valid_conv)
    monkeypatch.setattr(johnson.UpsampleConvLayer, "__call__",
                        lambda self, v: self.conv(johnson.upsample_nearest2x(v)))
    plain = jax.jit(lambda m, v: m(v))(model, x)  # fresh jit: retraced with the patches
    err = float(jnp.abs(fast - plain).max() / jnp.abs(plain).max())
    assert 0 < err < 1e-4, err  # 0 would mean the patches did not take (seen: 8e-6)


def test_initial_output_in_image_range(small: TransformerNet) -> None:
    y = np.asarray(forward_and_grad(small, _image(SHAPE))[0])
    assert 0.3 < y.mean() < 0.7 and 0.02 < y.std() < 0.4, (y.mean(), y.std())


def _randomize(model: nnx.Module, seed: int) -> nnx.Module:
    """Same graph, every param (incl. biases and IN affine) perturbed by N(0, 0.3^2).

    numpy RNG: jax.random would compile a sampler per leaf shape (slow on CPU).
    """
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    leaves = [p + 0.3 * rng.standard_normal(p.shape).astype(np.float32) for p in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def _with_in_epsilon(model: nnx.Module, eps: float) -> nnx.Module:
    model = nnx.clone(model)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.InstanceNorm):
            m.epsilon = eps
    return model


def _spatial_spread(y: jax.Array) -> float:
    y = np.asarray(y, np.float64)
    return float(np.max(np.ptp(y.reshape(y.shape[0], -1, y.shape[-1]), axis=1)))


CONST = jnp.full((1, 33, 100, 3), 0.37, jnp.float32)  # odd / non-multiple-of-4: pad-to-4 too


def test_constant_image_gives_constant_output(small: TransformerNet) -> None:
    """Reflection padding of a constant is constant, so every conv output stays constant and
    instance norm maps it to its bias: the output must be spatially constant. Random biases and
    IN affine params make every layer's padding matter, not just the first conv's.

    IN epsilon is raised to 1 here because with 1e-5 a (near) constant map is ill-conditioned:
    float32 rounding differences between conv output positions (~1e-8) have variance far below
    epsilon and each IN amplifies them by up to 1/sqrt(1e-5) ~ 316, so after 7 INs they are O(1).
    """
    for model in (small, _randomize(small, 1)):
        assert _spatial_spread(forward(_with_in_epsilon(model, 1.0), CONST)) < 1e-4


def test_constant_image_check_catches_zero_padding(
    small: TransformerNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The constant-image test is not vacuous: zero padding makes the output vary at borders."""

    def zero_pad(x: jax.Array, pad: int) -> jax.Array:
        return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    monkeypatch.setattr(johnson, "reflect_pad", zero_pad)
    model = _with_in_epsilon(_randomize(small, 1), 1.0)
    y = jax.jit(lambda m, x: m(x))(model, CONST)  # fresh jit: must retrace with the patch
    assert _spatial_spread(y) > 1e-2


def test_bfloat16_compute_close_to_float32(small: TransformerNet) -> None:
    graphdef, state = nnx.split(small)
    bf16 = _abstract(dtype=jnp.bfloat16, **SMALL)
    nnx.update(bf16, state)  # identical float32 params, bfloat16 compute
    assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
    x = _image(SHAPE, seed=3)
    y32, y16 = forward_and_grad(small, x)[0], forward(bf16, x)
    assert y16.dtype == jnp.float32
    err = np.abs(np.asarray(y16) - np.asarray(y32))
    assert err.max() > 0  # bf16 really was used
    assert err.mean() < 0.01 and err.max() < 0.1, (err.mean(), err.max())  # seen: 0.003, 0.02


# Biases whose gradient is identically zero: a per-channel constant added before an instance
# norm is removed by its mean subtraction. That is every conv bias except the last conv's, and
# each residual block's second IN bias (added to the residual stream, it only reaches
# reflection-padded convs that feed an IN). pytorch/examples has them too; kept for parity.
def _redundant(path: str) -> bool:
    is_conv_bias = path.endswith("conv/bias") and not path.startswith("deconv3/")
    return is_conv_bias or (path.startswith("res/") and path.endswith("/in2/bias"))


def test_gradients_reach_every_parameter(small: TransformerNet) -> None:
    model = _randomize(small, 2)  # generic IN scales/biases, not the 1/0 init

    def key(path: tuple[Any, ...]) -> str:  # ("res", 0, "in2", "bias", .value) -> "res/0/in2/bias"
        return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))

    _, grads = forward_and_grad(model, _image(SHAPE, seed=4), _image(SHAPE, seed=5))
    flat = {key(p): np.abs(np.asarray(g)).max() for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    live = {k: v for k, v in flat.items() if not _redundant(k)}
    dead = {k: v for k, v in flat.items() if _redundant(k)}
    assert len(dead) == 5 + 3 * SMALL["num_residual"]  # 5 + 2R conv biases, R res in2 biases
    scale = min(live.values())
    assert scale > 1e-5, live
    assert all(np.isfinite(v) for v in flat.values())
    assert max(dead.values()) < 1e-3 * scale, dead


def test_jit_does_not_retrace_for_same_shape(small: TransformerNet) -> None:
    """Split graphdef/state jit: repeated calls and new param values reuse one compilation."""
    x = _image(SHAPE, seed=7)
    y0, _ = forward_and_grad(small, x)
    forward_and_grad(small, x + 0.1)
    y2, _ = forward_and_grad(_randomize(small, 3), x)
    assert TRACES[nnx.graphdef(small), x.shape] == 1
    assert not np.allclose(y0, y2)
