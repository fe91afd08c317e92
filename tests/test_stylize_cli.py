"""`python -m nstjax.stylize`: a real run, a sweep, and one clear line for every bad input."""
import json
import os
import subprocess
import sys

from PIL import Image


def run_cli(args, cwd, assets, module="nstjax.stylize", timeout=600):
    env = dict(os.environ, NSTJAX_ASSETS=str(assets), WANDB_MODE="offline", NSTJAX_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_stylize_writes_image_and_report(tmp_path, assets):
    r = run_cli(["content.image=data/content/amber.jpg", "style=candy", "size=48", "steps=6",
                 "log_every=3", "image_every=3", "optimizer=adam", "color=luminance", f"output={tmp_path}/o.png",
                 f"hydra.run.dir={tmp_path}/run"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Image.open(tmp_path / "o.png").size == (48, 48)
    assert (tmp_path / "o_00003.png").exists() and (tmp_path / "o_00006.png").exists()
    rep = json.loads((tmp_path / "o.json").read_text())
    for k in ("content", "style", "tv", "total"):
        assert k in rep["initial"] and k in rep["final"]
    assert rep["final"]["total"] < rep["initial"]["total"]
    assert rep["steps"] == 6 and rep["size"] == [48, 48] and rep["device"].startswith("cpu")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "W&B offline run missing"


def test_multirun_sweep(tmp_path, assets):
    r = run_cli(["-m", "loss.style_weight=10,1000", "size=32", "steps=2", "log_every=2",
                 "optimizer=adam", "wandb=disabled", "output=${hydra:sweep.dir}/${hydra:job.num}.png",
                 f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-2000:]
    reps = [json.loads((tmp_path / "sweep" / f"{i}.json").read_text()) for i in (0, 1)]
    assert reps[0]["final"]["total"] < reps[1]["final"]["total"]  # 100x the style weight


def test_compilation_cache_is_written_then_reused(tmp_path, assets):
    cache = tmp_path / "xla_cache"
    args = ["size=40", "steps=2", "log_every=2", "optimizer=adam", "wandb=disabled", f"output={tmp_path}/c.png",
            f"runtime.compilation_cache={cache}", "runtime.cache_min_compile_seconds=0"]
    r = run_cli(args, tmp_path, assets)
    assert r.returncode == 0, r.stderr[-2000:]
    first = sorted(p.name for p in cache.iterdir())
    assert any(n.startswith("jit_step") for n in first), first
    r = run_cli(args, tmp_path, assets)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir()) == first  # every program came from the cache


def _bad_inputs(tmp_path, assets):
    data = (assets / "data/content/chicago.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 4])
    (tmp_path / "corrupt.jpg").write_bytes(b"GIF89a" + b"\x00" * 50)
    return {
        "missing": (["content.image=nope/missing.jpg"], "missing.jpg"),
        "corrupt": ([f"content.image={tmp_path}/corrupt.jpg"], "corrupt.jpg"),
        "truncated": ([f"style.image={tmp_path}/trunc.jpg"], "trunc.jpg"),
        "zero size": (["size=0"], "size"),
        "negative size": (["size=-5"], "size"),
        "bad pyramid": (["size=64", "pyramid=[128]"], "pyramid"),
        "bad optimizer": (["optimizer=sgd"], "optimizer"),
        "bad layer": (["loss.content_layers=[relu9_1]"], "relu9_1"),
        "bad layer weights": (["loss.style_layer_weights=[1,2]"], "style_layer_weights"),
        "bad color": (["color=sepia"], "color"),
        "bad conv impl": (["vgg.conv_impl=fft"], "vgg.conv_impl"),
        "unwritable cache": (["runtime.compilation_cache=/proc/nstjax_cache"], "compilation_cache"),
        "non-numeric steps": (["steps=abc"], "steps"),
        "non-numeric size": (["size=abc"], "size=abc"),
        "non-numeric weight": (["loss.style_weight=lots"], "loss.style_weight"),
        "unknown setting": (["stepz=3"], "stepz"),
    }


def test_bad_input_gives_one_line(tmp_path, assets):
    for name, (args, needle) in _bad_inputs(tmp_path, assets).items():
        r = run_cli([*args, "wandb=disabled", f"output={tmp_path}/x.png"], tmp_path, assets)
        assert r.returncode == 2, (name, r.returncode)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("nstjax: error:"), (name, r.stderr[-1500:])
        assert needle in lines[0], (name, lines[0])
        assert "Traceback" not in r.stderr


def test_unknown_style_is_reported_by_name(tmp_path, assets):
    r = run_cli(["style=picasso_blue", "wandb=disabled"], tmp_path, assets)
    assert r.returncode == 2
    assert "picasso_blue" in r.stderr and "Traceback" not in r.stderr
    assert "mosaic" in r.stderr  # Hydra lists the available styles
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nstjax: error:"), r.stderr  # one line, not Hydra's 17


def test_unwritable_output_fails_before_the_optimization(tmp_path, assets):
    import time

    t0 = time.perf_counter()
    r = run_cli(["size=512", "steps=500", "wandb=disabled", "output=/proc/nstjax_out/x.png"], tmp_path, assets)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("nstjax: error: output"), r.stderr[-1500:]
    assert "/proc/nstjax_out/x.png" in lines[0]
    assert time.perf_counter() - t0 < 60  # 500 steps at 512 px would take minutes


def test_images_too_small_for_the_loss_layers_are_refused_by_name(tmp_path, assets):
    from PIL import Image
    import numpy as np

    for name, shape in (("pano.png", (200, 4000, 3)), ("tall.png", (2000, 2, 3))):
        Image.fromarray(np.full(shape, 128, np.uint8)).save(tmp_path / name)
        r = run_cli([f"content.image={tmp_path / name}", "size=256", "wandb=disabled", f"output={tmp_path}/o.png"],
                    tmp_path, assets)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-1500:]
        assert "content.image" in lines[0] and ">= 16 px" in lines[0], lines[0]
