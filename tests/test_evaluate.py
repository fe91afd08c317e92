"""Networks judged where users run them: full-size validation in training, `nstjax.evaluate`,
and Gatys on the same photos and loss as the reference of what the loss can reach."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 150
VAL = 2


def run_cli(module: str, args: list[str], cwd, assets, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, NSTJAX_ASSETS=str(assets), NPROC="8")
    env.pop("WANDB_MODE", None)  # the command's wandb= setting decides, not CI's WANDB_MODE
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, assets, photos):
    """A short CPU run on the real photos, validated at 256 and 512 px on held-out Kodak photos.
    The preset's proportions at half scale: crops of half the resized photo, style at 4x the crop."""
    d = tmp_path_factory.mktemp("quality")
    args = ["experiment=cpu_quick", "style=mosaic", "data.size=64", "data.resize=128", "loss.style_size=256", f"train.steps={STEPS}",
            f"train.samples={VAL}", f"data.val_path={photos / 'val'}", "train.val_sizes=[256,512]",
            "train.sample_every=0", f"train.save_every={STEPS}", "train.log_every=50", "wandb=disabled",
            "run_name=q"]
    r = run_cli("nstjax.train", args, d, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    run = d / "runs" / "q"
    return {"dir": d, "run": run, "stdout": r.stdout, "summary": json.loads((run / "summary.json").read_text())}


def test_a_short_run_stylizes_at_the_sizes_of_use_and_keeps_the_layout(trained):
    s = trained["summary"]
    for side in ("256", "512"):
        r = s["val_at"][side]
        # Below the photos' own style loss at the size users look at, style targets at that size.
        assert r["style"] < r["photo_style"], (side, r)
        # The recipe's palette term: the outputs' colours far closer to the style's than the photos'.
        assert r["palette"] < 0.5 * r["photo_palette"], (side, r)
        # The scene survives: the output's edges follow its own photo far more than another one
        # (unrelated photos correlate near 0; the palette term repaints regions early in training).
        assert r["edge_corr_own"] > 0.1 and r["edge_corr_own"] > 5 * abs(r["edge_corr_other"]), (side, r)
    assert "at 256 px: style" in trained["stdout"] and "at 512 px: style" in trained["stdout"]
    # The sample grid holds full-resolution outputs at the first validation size.
    with Image.open(trained["run"] / "samples" / f"step_{STEPS:06d}.jpg") as im:
        assert im.size == (VAL * 256, 2 * 256)


def test_evaluate_reproduces_validation_and_gatys_is_the_reference(trained, tmp_path, assets, photos):
    report, images = tmp_path / "r.json", tmp_path / "strips"
    args = [f"model_path={trained['run'] / 'checkpoints'}", f"data.path={photos / 'val'}", f"data.limit={VAL}",
            "sizes=[256]", "gatys_steps=20", f"output={report}", f"images={images}"]
    r = run_cli("nstjax.evaluate", args, tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(report.read_text())
    net, gatys = rep["sizes"]["256"]["network"], rep["sizes"]["256"]["gatys"]
    # The same checkpoint, photos, loss and style scale as the trainer's validation: the same numbers.
    val = trained["summary"]["val_at"]["256"]
    for key in ("style", "content", "photo_style", "palette", "photo_palette"):
        assert net[key] == pytest.approx(val[key], rel=1e-3), key
    # Gatys optimizes each photo's own loss directly: it reaches below the network.
    assert gatys["total"] < net["total"] and gatys["style"] < gatys["photo_style"]
    assert "network" in r.stdout and "gatys" in r.stdout
    strips = sorted(images.iterdir())
    assert len(strips) == VAL
    with Image.open(strips[0]) as im:
        assert im.size == (3 * 256, 256)  # photo | network | Gatys


def test_evaluate_a_torch_model_with_a_named_style(tmp_path, assets, photos):
    pth = os.path.join(ROOT, "tests", "fixtures", "torch", "tiny_zip.pth")
    args = [f"model_path={pth}", f"data.path={photos / 'val' / 'kodak24_kodim01.jpg'}", "sizes=[64]"]
    r = run_cli("nstjax.evaluate", [*args, "style=mosaic", f"output={tmp_path / 'r.json'}"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    net = json.loads((tmp_path / "r.json").read_text())["sizes"]["64"]["network"]
    assert np.isfinite(net["style"]) and net["photo_style"] > 0
    # Without a style, a .pth (no training config) is refused in one line.
    r = run_cli("nstjax.evaluate", args, tmp_path, assets)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "pass style=NAME" in lines[0], r.stderr[-2000:]
    r = run_cli("nstjax.evaluate", [*args, "style=mosaic", "sizes=[8]"], tmp_path, assets)
    assert r.returncode == 2 and "sizes must be >= 16" in r.stderr, r.stderr[-2000:]


def test_infer_names_the_size_a_network_was_made_for(trained, tmp_path, assets):
    photo = assets / "data" / "content" / "chicago.jpg"  # 712x474, well above the recipe's 256 px
    ckpt = str(trained["run"] / "checkpoints")
    r = run_cli("nstjax.infer", [f"model_path={ckpt}", f"input={photo}", f"output={tmp_path / 'a.jpg'}"], tmp_path, assets)
    assert r.returncode == 0 and "made for 256 px outputs" in r.stdout and "net_size=256" in r.stdout, r.stdout
    r = run_cli("nstjax.infer", [f"model_path={ckpt}", f"input={photo}", f"output={tmp_path / 'b.jpg'}",
                                 "net_size=256"], tmp_path, assets)
    assert r.returncode == 0 and "made for" not in r.stdout, r.stdout
    with Image.open(tmp_path / "b.jpg") as im:
        assert im.size == (712, 474)  # the output keeps the photo's size


def test_evaluate_at_the_networks_own_scale(trained, tmp_path, assets, photos):
    """net_size runs the network at that long side and judges its output resized to each size of
    use, as `nstjax.infer net_size=N` makes it (the gain at 1024 px is a benchmark: README)."""
    report, images = tmp_path / "r.json", tmp_path / "strips"
    args = [f"model_path={trained['run'] / 'checkpoints'}", f"data.path={photos / 'val'}", f"data.limit={VAL}",
            "sizes=[256,512]", "net_size=256", f"output={report}", f"images={images}"]
    r = run_cli("nstjax.evaluate", args, tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["net_size"] == 256
    val = trained["summary"]["val_at"]
    # At its own size net_size changes nothing: the trainer's numbers.
    for key in ("style", "content"):
        assert rep["sizes"]["256"]["network"][key] == pytest.approx(val["256"][key], rel=1e-3), key
    # At 512 the output is the 256 px one resized: judged against the same photos and targets,
    # but not the same output as running the network at 512.
    up, native = rep["sizes"]["512"]["network"], val["512"]
    assert up["photo_style"] == pytest.approx(native["photo_style"], rel=1e-3)
    assert up["style"] != pytest.approx(native["style"], rel=1e-2)
    # Resizing softens edges, yet keeps most of their match to their own photo, far above another's.
    assert up["edge_corr_own"] > 0.5 * val["256"]["edge_corr_own"], (up, val["256"])
    assert up["edge_corr_own"] > 3 * abs(up["edge_corr_other"]), up
    with Image.open(sorted(images.glob("*_512.jpg"))[0]) as im:
        assert im.size == (2 * 512, 512)  # photo | network, at the size of use
