"""Stylizer on CPU: the parameters folded into the executable as constants (fold_params)."""
import numpy as np
from flax import nnx

from nstjax import trees
from nstjax.image import load_resized
from nstjax.networks import build_network
from nstjax.networks.johnson import JohnsonConfig
from nstjax.serving.stylizer import Stylizer, runner_for


def _params(seed: int, runner) -> dict:
    model = build_network(runner.config, rngs=nnx.Rngs(seed))
    return {k: np.asarray(v) for k, v in
            trees.flatten(nnx.split(model, nnx.Param)[1], drop_variable_value=True).items()}


def test_folded_params_stylize_as_passed_ones_with_less_work_per_call(assets):
    photo = load_resized(sorted((assets / "data/photos/val").glob("*.jpg"))[1], 96)
    # width 1: the 128-channel residual convs take the Winograd path, whose kernel transform folds
    runner = runner_for(JohnsonConfig(width=1.0, num_residual=2))
    params = _params(0, runner)
    folded = Stylizer(runner.serve, params, meta={}, backend="params", fold_params=True)
    passed = Stylizer(runner.serve, params, meta={}, backend="params")
    a, b = folded(photo), passed(photo)
    assert float(np.std(a)) > 0.01
    assert float(np.abs(a - b).max()) < 1e-4  # the folder rounds the kernel transforms its own way
    flops = {name: s.compile((1, *photo.shape)).cost_analysis()["flops"]
             for name, s in (("folded", folded), ("passed", passed))}
    assert flops["folded"] < flops["passed"]  # the kernel transforms left the per-call work


def test_folded_executables_are_shared_only_between_equal_params(assets):
    photo = load_resized(sorted((assets / "data/photos/val").glob("*.jpg"))[2], 64)
    runner = runner_for(JohnsonConfig(width=0.25, num_residual=1))
    cache: dict = {}
    p0, p1 = _params(0, runner), _params(1, runner)
    s0 = Stylizer(runner.serve, p0, meta={}, backend="params", fold_params=True, cache=cache)
    s1 = Stylizer(runner.serve, p1, meta={}, backend="params", fold_params=True, cache=cache)
    y0, y1 = s0(photo), s1(photo)
    assert len(cache) == 2 and float(np.abs(y0 - y1).max()) > 1e-3
    again = Stylizer(runner.serve, {k: v.copy() for k, v in p0.items()}, meta={}, backend="params",
                     fold_params=True, cache=cache)
    assert again.is_compiled((1, *photo.shape)) and len(cache) == 2
    np.testing.assert_array_equal(again(photo), y0)
