"""The real trainer stopped and started again: sweeps' checkpoints, preemption, changed settings."""
import json

from tests.train_cli import TINY, one_line_error, run_train, start_train


def test_a_sweep_with_list_overrides_writes_checkpoints_that_load(tmp_path, assets):
    # A sweep job's folder is named after its overrides; a list override once put brackets in
    # it, under which Orbax committed checkpoints that could not be read back.
    r = run_train(["-m", *TINY, "train.steps=2", "run_name=s", "loss.style_layer_weights=[1000,10,10,1]",
                   "loss.style_weight=0.1,0.2"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted((tmp_path / "multirun" / "s").glob("*/checkpoints"))
    assert len(jobs) == 2, jobs
    assert all("style_layer_weights=(1000,10,10,1)" in str(j) and "[" not in str(j) for j in jobs), jobs
    import numpy as np
    from nstjax import load_stylizer
    from nstjax.image import load_resized
    photo = load_resized(str(assets / "data/content/chicago.jpg"), 64)
    for job in jobs:
        out = np.asarray(load_stylizer(job)(photo))
        assert out.shape == photo.shape and np.isfinite(out).all()
        assert np.abs(out - photo).mean() > 0.01  # the network's output, not the photo
    # A checkpoint path Orbax cannot write under is one line, before any training.
    bad = tmp_path / "w[1]"
    one_line_error(run_train([*TINY, f"train.ckpt_dir='{bad}'"], tmp_path, assets), str(bad))
    assert not bad.exists()


def test_sigterm_checkpoints_exits_143_and_the_same_command_resumes(tmp_path, assets):
    """Preemption on the real trainer: checkpoint, one clear line, 128+SIGTERM, no summary."""
    import signal
    import time

    args = [*TINY, "train.steps=40", "train.save_every=2", "train.sample_every=0", "run_name=p"]
    ck = tmp_path / "runs" / "p" / "checkpoints"
    proc = start_train(args, tmp_path, assets)
    try:
        deadline = time.time() + 300
        while not (ck / "2").is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be preempted"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    last = [ln for ln in err.strip().splitlines() if ln.strip()][-1]
    assert last.startswith("nstjax: stopped by SIGTERM at step") and "resume" in last, last
    stopped_at = int(last.split("at step ")[1].split(";")[0])
    assert 2 <= stopped_at < 40
    assert str(stopped_at) in {p.name for p in ck.iterdir()}  # the checkpoint of the step it stopped at
    run = tmp_path / "runs" / "p"
    assert not (run / "summary.json").exists() and not (run / "samples").exists()  # no work after the signal
    r = run_train(args, tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {stopped_at}" in r.stdout and json.loads((run / "summary.json").read_text())["step"] == 40


def test_resume_shows_harmless_changes_refuses_breaking_ones_and_keeps_the_wandb_run(tmp_path, assets):
    args = [*TINY, "wandb=offline", "train.save_every=2", "train.sample_every=0", "run_name=c"]
    r = run_train([*args, "train.steps=2"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_train([*args, "train.steps=4", "train.log_every=1"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 2 with changed settings" in r.stdout and "train.steps: 2 -> 4" in r.stdout, r.stdout[-2000:]
    # One W&B run continued, not two: both offline run directories carry the same run id.
    runs = sorted((tmp_path / "runs" / "c" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1, runs
    ck_before = sorted(p.name for p in (tmp_path / "runs" / "c" / "checkpoints").iterdir())
    for change, key in ((f"style.image={assets}/data/styles/candy.jpg", "style.image"),
                        ("model.width=0.25", "model.width"), ("loss.style_weight=3", "loss.style_weight")):
        r = run_train([*args, "train.steps=6", change], tmp_path, assets)
        one_line_error(r, key)
        assert "run_name=" in r.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "c" / "checkpoints").iterdir()) == ck_before
