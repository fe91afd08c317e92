"""Feed-forward training: data-parallel equivalence, the CLI end to end, resume, bad input."""
import json
import os
import subprocess
import sys
import textwrap

from tests.train_cli import TINY, one_line_error, run_train


EQUIVALENCE = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from nstjax.training.data import load_val_images
    from nstjax.image import load_resized
    from nstjax.networks import TransformerNet
    from nstjax.perceptual import Encoder, PerceptualLoss
    from nstjax.training.trainer import Trainer, make_mesh
    from nstjax.vgg import load_vgg19
    import os
    assets = os.environ["NSTJAX_ASSETS"]
    assert len(jax.devices()) == 2, jax.devices()
    vgg = load_vgg19()
    loss = PerceptualLoss({"relu2_2": 1.0}, {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0},
                          {"content": 1.0, "style": 10.0, "tv": 1e-5})
    encoder = Encoder(vgg, loss.layers)
    grams = loss.style_targets(encoder, [load_resized(assets + "/data/styles/mosaic.jpg", 64)])
    batch = load_val_images(assets + "/data/photos/val", 32, limit=4)
    # SGD keeps the update linear in the gradient (Adam would blow up the float noise of
    # gradients that are zero in exact arithmetic, e.g. conv biases before instance norm).
    import optax
    deltas = {}
    for n in (1, 2):
        model = TransformerNet(width=0.125, num_residual=1, rngs=nnx.Rngs(0))
        tr = Trainer(model, encoder, loss, optax.sgd(1e-9), grams, make_mesh(jax.devices()[:n]))
        before = jax.tree.map(np.asarray, tr.params)
        x = tr.put_batch(batch)
        assert len(x.sharding.device_set) == n
        terms = tr.step(x)
        deltas[n] = jax.tree.map(lambda a, b: np.asarray(a) - b, tr.params, before)
        print(n, float(terms["total"]))
    scale = max(float(np.abs(d).max()) for d in jax.tree.leaves(deltas[1]))
    assert scale > 0
    err = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(deltas[1]), jax.tree.leaves(deltas[2])))
    print("max diff / max update", err / scale)
    assert err / scale < 1e-4, err / scale
    print("OK")
""")


def test_two_devices_match_one_device(assets, tmp_path):
    env = dict(os.environ, NSTJAX_ASSETS=str(assets), NPROC="8",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    r = subprocess.run([sys.executable, "-c", EQUIVALENCE], env=env, capture_output=True, text=True,
                       timeout=420, cwd=tmp_path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_train_cli_samples_checkpoints_and_resumes(tmp_path, assets):
    args = [*TINY, "train.steps=4", "train.save_every=2", "train.sample_every=2", "run_name=t"]
    r = run_train(args, tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4 and summary["devices"] == 1
    assert summary["val"]["style"] > 0 and summary["val_photo_style_loss"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert (run / "samples" / "step_000002.jpg").exists() and (run / "samples" / "step_000004.jpg").exists()
    # Same command with more steps continues from step 4.
    r = run_train([*args, "train.steps=6"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 4" in r.stdout, r.stdout
    assert json.loads((run / "summary.json").read_text())["step"] == 6
    # train.resume=false starts over and drops the old checkpoints.
    r = run_train([*args, "train.steps=2", "train.resume=false"], tmp_path, assets)
    assert r.returncode == 0 and "resumed" not in r.stdout, r.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]


def test_bad_training_input(tmp_path, assets):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_train([*TINY, f"data.path={empty}"], tmp_path, assets), str(empty))
    one_line_error(run_train([*TINY, f"data.path={tmp_path}/nope"], tmp_path, assets), "nope")
    one_line_error(run_train([*TINY, "data=coco", f"data.data_dir={empty}"], tmp_path, assets), "data=folder")
    one_line_error(run_train([*TINY, "train.batch_size=3"], tmp_path, assets,
                              {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}), "divisible")
    ck = tmp_path / "ck"
    (ck / "7").mkdir(parents=True)
    (ck / "7" / "garbage").write_text("not a checkpoint")
    one_line_error(run_train([*TINY, f"train.ckpt_dir={ck}"], tmp_path, assets), str(ck))
    one_line_error(run_train([*TINY, "style=nonexistent_style"], tmp_path, assets), "nonexistent_style")
    one_line_error(run_train([*TINY, "train.steps=abc"], tmp_path, assets), "train.steps")
    one_line_error(run_train([*TINY, "train.nonfinite=ignore"], tmp_path, assets), "train.nonfinite")
    one_line_error(run_train([*TINY, "model.width=wide"], tmp_path, assets), "model.width")


def test_nonfinite_step_is_skipped_on_the_device(assets, photos):
    """A NaN in the batch: the update is skipped inside the compiled step, the flag says so."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from nstjax.image import load_resized
    from nstjax.networks import build_network
    from nstjax.perceptual import Encoder, PerceptualLoss
    from nstjax.training.data import load_val_images
    from nstjax.training.trainer import Trainer, make_mesh
    from nstjax.vgg import load_vgg19

    vgg = load_vgg19(assets_dir=str(assets))
    loss = PerceptualLoss({"relu2_2": 1.0}, {"relu1_1": 1.0, "relu2_1": 1.0}, {"content": 1.0, "style": 10.0, "tv": 1e-5})
    encoder = Encoder(vgg, loss.layers)
    grams = loss.style_targets(encoder, [load_resized(assets / "data/styles/mosaic.jpg", 48)])
    model = build_network({"name": "johnson", "width": 0.125, "num_residual": 1}, rngs=nnx.Rngs(0))
    tr = Trainer(model, encoder, loss, optax.adam(1e-3), grams, make_mesh(jax.devices()[:1]))
    good = load_val_images(photos / "val", 32, limit=2)
    bad = good.copy()
    bad[0, 5, 5, 1] = np.nan
    before = jax.tree.map(np.asarray, tr.params)
    t = tr.step(tr.put_batch(bad))
    assert int(t["nonfinite"]) == 1 and not np.isfinite(float(t["total"]))
    after = jax.tree.map(np.asarray, tr.params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    assert tr.params_finite()
    t = tr.step(tr.put_batch(good))
    assert int(t["nonfinite"]) == 0
    moved = jax.tree.map(np.asarray, tr.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(moved)))


def test_prepare_coco_from_an_archive_then_train_on_it(tmp_path, photos, assets):
    """`python -m nstjax.data prepare coco` on a tiny archive laid out as COCO's, then `data=coco`."""
    import zipfile

    archive = tmp_path / "train2017.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, f in enumerate(sorted((photos / "train").glob("coco*.jpg"))[:12]):
            z.write(f, f"train2017/{i + 9:012d}.jpg")
    data_dir = tmp_path / "tfds"
    env = dict(os.environ, NSTJAX_ASSETS=str(assets))
    r = subprocess.run([sys.executable, "-m", "nstjax.data", "prepare", "coco", "--dir", str(data_dir),
                        "--archive", f"train={archive}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (data_dir / "coco" / "2017" / "1.1.0" / "dataset_info.json").is_file()
    assert "data=coco" in r.stdout
    r = run_train([*TINY, "data=coco", f"data.data_dir={data_dir}", "train.steps=2", "run_name=coco"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "coco" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["data_skipped"] == 0 and summary["val"]["style"] > 0
    # A bad archive or split is one line.
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    for args, needle in ((["--archive", f"train={tmp_path / 'bad.zip'}"], "not a readable zip"),
                         (["--splits", "test"], "--splits")):
        r = subprocess.run([sys.executable, "-m", "nstjax.data", "prepare", "coco", "--dir", str(data_dir), *args],
                           env=env, capture_output=True, text=True, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]


def test_every_experiment_preset_composes_and_passes_the_schema(assets):
    from pathlib import Path

    from nstjax.config import TrainConfig, compose, load

    presets = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))
    assert {"cpu_quick", "gpu", "sweep_cpu_recipe"} <= set(presets)
    for name in presets:
        cfg = load(TrainConfig, compose("train", [f"experiment={name}", "train.ckpt_dir=ckpt"]))
        assert cfg.train.val_sizes and cfg.run_name, name
