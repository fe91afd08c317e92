"""One network for many styles (conditional instance norm, `style.multi=true`): the math of
fixing a style, learning distinct styles on real photos, and the CLI path train -> export ->
infer with `model_style=`."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nstjax import losses
from nstjax.errors import NstjaxError
from nstjax.networks import TransformerNet, fix_style, style_weights
from nstjax.perceptual import Encoder, PerceptualLoss
from nstjax.serving.loading import load_stylizer
from nstjax.serving.stylizer import runner_for
from nstjax.training.data import load_val_images
from nstjax.training.loop import stack_targets
from nstjax.training.trainer import Trainer, make_mesh
from tests.train_cli import TINY, one_line_error, run_train, train_env

MODEL = {"name": "johnson", "width": 0.25, "num_residual": 1, "num_styles": 3, "style_names": ["a", "b", "c"]}


def perturbed_params(model_cfg, seed=0):
    """A network's params with noise on every leaf: the style rows differ, as after training."""
    model = runner_for(model_cfg)
    rng = np.random.default_rng(seed)
    return {n: np.asarray(rng.normal(0, 0.3, s.shape) + n.endswith("scale"), np.float32)
            for n, s in model.specs.items()}


def forward(model_cfg, flat, x, style=None):
    r = runner_for(model_cfg)
    net = nnx.merge(r.graphdef, jax.tree.unflatten(r.treedef, [jnp.asarray(flat[n]) for n in r.names]))
    return np.asarray(net(jnp.asarray(x)) if style is None else net(jnp.asarray(x), jnp.asarray(style)))


def test_fixing_a_style_computes_what_the_network_computes_in_it(image):
    x = np.stack([image("content/chicago.jpg", 64)[:40, :60], image("content/amber.jpg", 64)[:40, :60]])
    flat = perturbed_params(MODEL)
    for choice, w in (("b", [0, 1, 0]), (2, [0, 0, 1]), ({"a": 1, "c": 3}, [0.25, 0, 0.75])):
        cfg, fixed, record = fix_style(MODEL, flat, choice, "test")
        assert cfg["num_styles"] == 1 and cfg["style_names"] is None
        runner_for(cfg).check(fixed, "fixed", "")  # an ordinary single-style network's params
        want = forward(MODEL, flat, x, np.tile(np.float32(w), (2, 1)))
        got = forward(cfg, fixed, x)
        assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max()), (choice, np.abs(got - want).max())
        assert sum(record.values()) == pytest.approx(1.0)
    outs = [forward(*fix_style(MODEL, flat, k, "test")[:2], x) for k in range(3)]
    assert min(np.abs(outs[i] - outs[j]).mean() for i in range(3) for j in range(i)) > 1e-2  # styles differ
    with pytest.raises(ValueError, match="style weights"):
        forward(MODEL, flat, x)


@pytest.mark.parametrize("choice, needle", [
    ("d", "the network's styles are 0=a, 1=b, 2=c"), (3, "0=a, 1=b, 2=c"), ({"a": -1, "b": 1}, ">= 0"),
    ({"a": "x"}, "must be a number"), (None, "draws 3 styles; choose one with model_style=NAME"),
])
def test_bad_style_choices_are_one_clear_error(choice, needle):
    with pytest.raises(NstjaxError, match="model_style") as e:
        fix_style(MODEL, perturbed_params(MODEL), choice, "net.npz")
    assert needle in str(e.value) and "\n" not in str(e.value)
    single = {**MODEL, "num_styles": 1, "style_names": None}
    with pytest.raises(NstjaxError, match="draws a single style"):
        fix_style(single, perturbed_params(single), "a", "net.npz")
    assert style_weights(MODEL, {"b": 2, "c": 2}).tolist() == [0.0, 0.5, 0.5]


def test_one_network_learns_two_distinct_styles_on_real_photos(assets, vgg):
    """80 steps on real photos with two real styles: each style's outputs are closer to that
    style's Gram targets than the other style's outputs are (untrained, both are the same)."""
    loss = PerceptualLoss({"relu2_2": 1.0}, {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0},
                          {"content": 1.0, "style": 10.0, "tv": 1e-5})
    encoder = Encoder(vgg, loss.layers)
    from nstjax.image import load_resized

    per_style = [loss.style_targets(encoder, [load_resized(f"{assets}/data/styles/{n}.jpg", 64)])
                 for n in ("candy", "the_scream")]
    photos = load_val_images(f"{assets}/data/photos/train", 48, limit=16)
    val = load_val_images(f"{assets}/data/photos/val", 48, limit=4)
    trainer = Trainer(TransformerNet(width=0.25, num_residual=1, num_styles=2, rngs=nnx.Rngs(0)), encoder, loss,
                      optax.adam(3e-3), stack_targets(per_style), make_mesh(), num_styles=2)

    def style_loss(target: int, drawn_in: int) -> float:
        ys = np.stack([trainer.stylize(x[None], first_style=drawn_in)[0] for x in val])
        f = encoder.encode(jnp.asarray(ys), loss.style_names)
        return float(sum(jnp.mean((losses.gram(f[k]) - per_style[target][k]) ** 2) for k in loss.style_names))

    assert style_loss(0, 0) == pytest.approx(style_loss(0, 1), rel=1e-5)  # untrained: one look for both
    for i in range(80):
        trainer.step(trainer.put_batch(photos[(4 * i) % 16:(4 * i) % 16 + 4]), i)
    for target, other in ((0, 1), (1, 0)):
        own, other_loss = style_loss(target, target), style_loss(target, other)
        assert own < 0.95 * other_loss, (target, own, other_loss)


def test_cli_trains_one_network_for_three_styles_then_exports_and_serves_each(tmp_path, assets, image):
    styles = "[data/styles/candy.jpg,data/styles/mosaic.jpg,data/styles/wave.jpg]"
    r = run_train([*TINY, "style=presets", f"style.image={styles}", "train.steps=3", "train.batch_size=3",
                   "train.samples=3", "run_name=m"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/m/summary.json").read_text())
    assert summary["val_at"]["64"]["style"] > 0
    ckpt = tmp_path / "runs/m/checkpoints"
    photo = image("content/chicago.jpg", 96)

    with pytest.raises(NstjaxError, match="draws 3 styles; choose one with model_style=NAME"):
        load_stylizer(ckpt)
    outs = {n: load_stylizer(ckpt, model_style=n)(photo) for n in ("candy", "mosaic", "wave")}
    assert np.abs(outs["candy"] - outs["wave"]).mean() > 0  # each style's own rows
    mix = load_stylizer(ckpt, model_style={"candy": 1, "wave": 1})
    assert mix.meta["source"]["model_style"] == {"candy": 0.5, "wave": 0.5}

    env = train_env(assets)

    def cli(module, *args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    r = cli("nstjax.export", f"checkpoint={ckpt}", "output=all.nstjax.npz")  # every style, as params
    assert r.returncode == 0, r.stderr[-3000:]
    every = tmp_path / "all.nstjax.npz"
    np.testing.assert_allclose(load_stylizer(every, model_style="wave")(photo), outs["wave"], atol=1e-5)
    pytest.importorskip("onnxruntime")
    r = cli("nstjax.export", f"checkpoint={every}", "output=mosaic.onnx", "format=onnx", "model_style=mosaic")
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(load_stylizer(tmp_path / "mosaic.onnx")(photo), outs["mosaic"], atol=2e-3)
    r = cli("nstjax.infer", f"model_path={every}", f"input={assets}/data/content/chicago.jpg", "output=o.jpg")
    one_line_error(r, "draws 3 styles; choose one with model_style=NAME")
    r = cli("nstjax.infer", f"model_path={every}", f"input={assets}/data/content/chicago.jpg", "output=o.jpg",
            "model_style=mosaic", "size=96")
    assert r.returncode == 0 and (tmp_path / "o.jpg").is_file(), r.stderr[-3000:]


@pytest.mark.parametrize("args, needle", [
    (["style=presets", "style.blend_weights=[1,1,1,1,1,1,1,1,1,1]"], "exclude each other"),
    (["style=mosaic", "+model.num_styles=3"], "model.num_styles=3: a multi-style network trains with style.multi"),
    (["style=mosaic", "style.multi=true"], "needs two or more style images"),
])
def test_bad_multi_style_settings_are_one_line(tmp_path, assets, args, needle):
    one_line_error(run_train([*TINY, *args], tmp_path, assets), needle)
