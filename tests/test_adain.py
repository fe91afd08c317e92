"""Any style (AdaIN, `model=adain`): folding a style image in is exact, a short run on real
photos learns to stylize with paintings it never saw, and the CLI path train -> infer/export
with `model_style=PATH`."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nstjax import losses, trees
from nstjax.config import TrainConfig, compose, load
from nstjax.errors import NstjaxError
from nstjax.image import load_image
from nstjax.networks import NETWORKS, build_network, fix_style, model_config
from nstjax.networks.adain import adain, moments, style_view
from nstjax.perceptual import Encoder, PerceptualLoss
from nstjax.serving.exporting import export_model
from nstjax.serving.loading import load_stylizer
from nstjax.serving.stylizer import runner_for
from nstjax.training.data import load_val_images
from nstjax.training.loop import stack_targets
from nstjax.training.trainer import Trainer, make_mesh
from tests.train_cli import one_line_error, run_train, train_env

SMALL = {"name": "adain", "width": 0.25, "style_size": 64}


def trained_like(vgg, seed=0):
    """A small AdaIN network with the real encoder and a random decoder."""
    model = build_network(SMALL, rngs=nnx.Rngs(seed))
    NETWORKS["adain"].from_loss_network(model, vgg)
    return model, {k: np.asarray(v) for k, v in trees.flatten(nnx.state(model, nnx.Param),
                                                             drop_variable_value=True).items()}


def test_folding_a_style_image_or_a_mix_is_exact(assets, vgg, image):
    model, flat = trained_like(vgg)
    x = image("content/chicago.jpg", 60)[None]  # not a multiple of 8: padded and cropped back
    styles = {n: load_image(f"{assets}/data/styles/{n}.jpg") for n in ("candy", "wave")}
    cfg, fixed, record = fix_style(SMALL, flat, "candy", "t", load_style=styles.__getitem__)
    assert cfg["fixed_style"] and record == {"candy": 1.0}
    runner_for(cfg).check(fixed, "fixed", "")
    want = np.asarray(model(jnp.asarray(x), model.style_rows(jnp.asarray(style_view(styles["candy"], 64))[None])))
    got = np.asarray(runner_for(cfg).apply(fixed, jnp.asarray(x)))
    assert got.shape == x.shape
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
    # A mix is the paper's interpolation of AdaIN targets: sum_k w_k AdaIN(f, s_k).
    cfg, fixed, record = fix_style(SMALL, flat, {"candy": 1, "wave": 3}, "t", load_style=styles.__getitem__)
    assert record == {"candy": 0.25, "wave": 0.75}
    from nstjax.ops.pad import pad_to_multiple

    xp, crop = pad_to_multiple(jnp.asarray(x), 8, jnp)
    f = model.encoder(xp)
    ts = [adain(f, *moments(model.encoder(jnp.asarray(style_view(styles[n], 64))[None]))) for n in ("candy", "wave")]
    from nstjax.networks.adain import FEATURE_SCALE

    want = np.asarray(crop(model.decoder((0.25 * ts[0] + 0.75 * ts[1]) * FEATURE_SCALE)))
    got = np.asarray(runner_for(cfg).apply(fixed, jnp.asarray(x)))
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
    with pytest.raises(NstjaxError, match="stylizes with any style image; choose one with model_style=PATH"):
        fix_style(SMALL, flat, None, "net.npz", load_style=styles.__getitem__)
    with pytest.raises(NstjaxError, match=">= 0 with a positive sum"):
        fix_style(SMALL, flat, {"candy": -1}, "net.npz", load_style=styles.__getitem__)


def test_a_short_run_learns_to_stylize_with_paintings_it_never_saw(assets, vgg):
    """120 steps on real photos with four real styles: with two held-out paintings, the outputs'
    channel statistics (the moments loss) come far closer to each painting's than the photos'
    are, and than the untrained network's; the encoder stays the loss network's."""
    layers = {"relu1_1": 300.0, "relu2_1": 30.0, "relu3_1": 10.0, "relu4_1": 1.0}
    loss = PerceptualLoss({"relu4_1": 1.0}, layers, {"content": 1.0, "style": 0.0, "tv": 0.0, "moments": 1.0})
    encoder = Encoder(vgg, loss.layers)
    cfg = model_config(SMALL)
    styles = {n: load_image(f"{assets}/data/styles/{n}.jpg")
              for n in ("candy", "mosaic", "udnie", "la_muse", "wave", "starry_night")}
    train, held = ["candy", "mosaic", "udnie", "la_muse"], ["wave", "starry_night"]
    targets = {n: loss.style_targets(encoder, [style_view(styles[n], 64)]) for n in styles}
    model, before = trained_like(vgg)
    trainer = Trainer(model, encoder, loss, optax.adam(1e-3), stack_targets([targets[n] for n in train]),
                      make_mesh(), num_styles=4,
                      conditions=NETWORKS["adain"].conditions(model, cfg, [styles[n] for n in train]))
    photos = load_val_images(f"{assets}/data/photos/train", 48, limit=64)
    val = load_val_images(f"{assets}/data/photos/val", 48, limit=4)

    def stylized(p, x, s):
        net = nnx.merge(trainer.graphdef, p)
        return net(x, net.style_rows(s))

    apply = jax.jit(stylized)

    def moment_loss(name: str, images=None) -> float:
        if images is None:
            s = jnp.asarray(np.repeat(style_view(styles[name], 64)[None], len(val), 0))
            images = np.clip(np.asarray(apply(trainer.params, jnp.asarray(val), s)), 0, 1)
        f = encoder.encode(jnp.asarray(images), loss.style_names)
        return float(sum(w * losses.moment_loss(f[k], targets[name]["moments"][k]) for k, w in layers.items()))

    untrained = {n: moment_loss(n) for n in held}
    for i in range(120):
        trainer.step(trainer.put_batch(photos[(4 * i) % 64:(4 * i) % 64 + 4]), i)
    after = trees.flatten(trainer.params, drop_variable_value=True)
    for n in held:
        own, photo = moment_loss(n), moment_loss(n, val)
        assert own < 0.75 * photo and own < 0.5 * untrained[n], (n, own, photo, untrained[n])
    enc = [k for k in before if k.startswith("encoder/")]
    assert enc and all(np.array_equal(before[k], np.asarray(after[k])) for k in enc)  # frozen
    assert not np.array_equal(before["decoder/conv1_1/conv/kernel"], np.asarray(after["decoder/conv1_1/conv/kernel"]))


def test_cli_trains_an_any_style_network_then_serves_an_unseen_painting(tmp_path, assets, image):
    args = ["experiment=adain", "model.width=0.125", "model.style_size=32", "data.size=32", "data.resize=64",
            "loss.style_size=64", "train.val_sizes=[64]", "style.image=[data/styles/candy.jpg,data/styles/mosaic.jpg]",
            "train.steps=2", "train.batch_size=2", "train.samples=2", "train.log_every=2", "wandb=disabled",
            "run_name=a"]
    r = run_train(args, tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "runs/a/summary.json").read_text())["val_at"]["64"]["style"] > 0
    ckpt = tmp_path / "runs/a/checkpoints"
    photo = image("content/chicago.jpg", 64)
    with pytest.raises(NstjaxError, match="stylizes with any style image"):
        load_stylizer(ckpt)
    wave = load_stylizer(ckpt, model_style="data/styles/wave.jpg")  # never trained on: any style works
    assert wave.meta["source"]["model_style"] == {"data/styles/wave.jpg": 1.0}
    out = wave(photo)
    assert out.shape == photo.shape and np.abs(out - load_stylizer(ckpt, model_style="data/styles/udnie.jpg")(photo)).mean() > 0
    env = train_env(assets)
    meta = export_model(ckpt, tmp_path / "wave.nstjax.npz", model_style=f"{assets}/data/styles/wave.jpg")
    assert meta["model"]["fixed_style"] and meta["num_params"] > 0
    np.testing.assert_allclose(load_stylizer(tmp_path / "wave.nstjax.npz")(photo), out, atol=1e-5)
    r = subprocess.run([sys.executable, "-m", "nstjax.infer", f"model_path={ckpt}", f"input={assets}/data/content/chicago.jpg",
                        "output=o.jpg", "model_style=nowhere/painting.jpg"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    one_line_error(r, "model_style 'nowhere/painting.jpg': file not found")


@pytest.mark.parametrize("overrides, needle", [
    (["model=adain"], "set style.multi=true with two or more images"),
    (["model=adain", "style=presets"], "model.content_target=adain judges content at relu4_1 only"),
    (["experiment=adain", "model.content_target=x"], "model.content_target must be one of adain, photo"),
])
def test_bad_any_style_settings_are_one_clear_error(overrides, needle, tmp_path):
    with pytest.raises(NstjaxError) as e:
        load(TrainConfig, compose("train", [*overrides, f"train.ckpt_dir={tmp_path}"]))
    assert needle in str(e.value) and "\n" not in str(e.value)
