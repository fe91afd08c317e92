"""runtime.cpu_dots: whose matrix products a network's forward pass uses on CPU, chosen once per machine."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from nstjax import trees
from nstjax.image import load_resized
from nstjax.networks import build_network
from nstjax.networks.johnson import JohnsonConfig
from nstjax.ops import cpu_kernels
from nstjax.serving.stylizer import Stylizer, runner_for


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("NSTJAX_CACHE", str(tmp_path))
    yield tmp_path
    cpu_kernels.set_cpu_dots("auto")


def _stylizer() -> Stylizer:
    # 128 channels at the bottleneck: the residual blocks take the Winograd path, made of products
    runner = runner_for(JohnsonConfig(width=1.0, num_residual=1))
    params = trees.flatten(nnx.split(build_network(runner.config, rngs=nnx.Rngs(0)), nnx.Param)[1],
                           drop_variable_value=True)
    return Stylizer(runner.serve, params, meta={}, backend="params")


def test_both_choices_compile_products_where_asked_and_stylize_alike(fresh, assets):
    photo = load_resized(sorted((assets / "data/photos/val").glob("*.jpg"))[0], 96)
    out, ynn_calls = {}, {}
    for dots in ("xla", "ynnpack"):
        cpu_kernels.set_cpu_dots(dots)
        stylizer = _stylizer()
        text = stylizer.compile((1, *photo.shape)).as_text()
        entry = text.split("ENTRY")[1]
        assert "convolution(" in entry  # convolutions stay XLA's with either choice
        ynn_calls[dots] = text.count("__ynn_fusion")
        out[dots] = stylizer(photo)
    assert ynn_calls["ynnpack"] > ynn_calls["xla"]  # the products moved into YNNPACK
    assert float(np.abs(out["ynnpack"] - out["xla"]).max()) < 1e-5
    assert float(np.std(out["xla"])) > 0.01  # a real image came out
    assert not (fresh / "cpu_kernels.json").exists()  # an explicit choice measures nothing


def test_auto_measures_once_per_machine_and_remembers(fresh, monkeypatch):
    cpu_kernels.set_cpu_dots("auto")
    options = cpu_kernels.forward_options()
    known = json.loads((fresh / "cpu_kernels.json").read_text())
    entry = known[cpu_kernels.machine_key()]
    assert options == cpu_kernels.OPTIONS[entry["dots"]]
    assert entry["ms"]["xla"] > 0 and entry["ms"]["ynnpack"] > 0
    # A new process (the cache cleared) reads the answer instead of timing again.
    monkeypatch.setattr(cpu_kernels, "measure", lambda: pytest.fail("measured again"))
    cpu_kernels.set_cpu_dots("auto")
    assert cpu_kernels.forward_options() == options


def test_a_corrupt_answer_file_is_measured_again(fresh, monkeypatch):
    (fresh / "cpu_kernels.json").write_text("{not json")
    monkeypatch.setattr(cpu_kernels, "measure", lambda: {"xla": 2.0, "ynnpack": 1.0})
    cpu_kernels.set_cpu_dots("auto")
    assert cpu_kernels.forward_options() == cpu_kernels.OPTIONS["ynnpack"]
    monkeypatch.setattr(cpu_kernels, "measure", lambda: {"xla": 1.0, "ynnpack": 0.95})  # within the margin
    (fresh / "cpu_kernels.json").unlink()
    cpu_kernels.set_cpu_dots("auto")
    assert cpu_kernels.forward_options() == cpu_kernels.OPTIONS["xla"]


def test_a_bad_choice_is_refused_by_the_schema_naming_the_setting():
    from nstjax import config
    from nstjax.errors import NstjaxError

    job = ["model_path=m.npz", "input=a.jpg", "output=b.png"]
    assert config.load(config.InferConfig, config.compose("infer", job)).runtime.cpu_dots == "auto"
    with pytest.raises(NstjaxError, match="runtime.cpu_dots"):
        config.load(config.InferConfig, config.compose("infer", [*job, "runtime.cpu_dots=fast"]))
