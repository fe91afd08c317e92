"""Faults on the real trainer: kill -9 at random moments, a full disk. Nothing is lost."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from nstjax.serving.checkpoints import load_params_for_inference
from tests.train_cli import TINY as TRAIN_TINY, run_train, start_train

TINY = [*TRAIN_TINY, "train.sample_every=0"]


def _final_params(ckpt: Path, step: int) -> dict:
    params, _, got = load_params_for_inference(ckpt, step)
    assert got == step
    import jax

    return {"/".join(map(str, k)): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_kill_9_anywhere_then_the_same_command_finishes_bitwise_equal(tmp_path, assets):
    steps = 40
    args = [*TINY, f"train.steps={steps}", "train.save_every=4", "run_name=k"]
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    ref_dir.mkdir(), killed_dir.mkdir()
    r = run_train(args, ref_dir, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    want = _final_params(ref_dir / "runs" / "k" / "checkpoints", steps)

    ckpt = killed_dir / "runs" / "k" / "checkpoints"

    def names() -> list[str]:
        return sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else []

    def newest() -> int:
        return max((int(n) for n in names() if n.isdigit()), default=0)

    def writing(listing: list[str]) -> bool:  # a step being saved; not start-up's .write-test.*.tmp probe
        return any(".orbax-checkpoint-tmp" in n for n in listing)

    rng = random.Random(0)
    kills = []
    # 1: while a checkpoint is being written (its tmp directory exists); 2: a random moment
    # during start-up; 3: a random moment between two checkpoints.
    for moment in ("mid-checkpoint", "start-up", "between checkpoints"):
        proc = start_train(args, killed_dir, assets)
        try:
            deadline, since = time.time() + 300, newest()
            if moment == "mid-checkpoint":
                while proc.poll() is None and time.time() < deadline and not writing(names()):
                    time.sleep(0.002)
            elif moment == "start-up":
                time.sleep(rng.uniform(0.5, 3.0))
            else:
                while proc.poll() is None and time.time() < deadline and newest() <= since:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.3))
            assert proc.poll() is None, f"finished before the {moment} kill"
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            kills.append((moment, names()))
        finally:
            proc.kill()
    assert writing(kills[0][1]), kills  # really killed in the middle of a write
    r = run_train(args, killed_dir, assets)  # the same command, until it completes
    assert r.returncode == 0, r.stderr[-3000:]
    got = _final_params(ckpt, steps)
    assert got.keys() == want.keys()
    for k in want:  # bitwise: resume restores params, optimizer, RNG and the data position exactly
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@contextlib.contextmanager
def _small_disk(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_during_a_save_is_one_line_and_loses_nothing(tmp_path, assets):
    with _small_disk(tmp_path / "disk", "4m") as disk:
        ckpt = disk / "ck"
        args = [*TINY, "train.save_every=10", f"train.ckpt_dir={ckpt}", "run_name=d"]
        proc = start_train([*args, "train.steps=400"], tmp_path, assets)
        try:
            deadline = time.time() + 300
            while not (ckpt / "10").is_dir() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None
            # The disk fills up under the running job (its own save may have filled it first:
            # then even creating the filler fails, which is the same state).
            with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("train d")]
        assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
        assert len(lines) == 1 and "No space left on device" in lines[0], lines
        assert lines[0].startswith("nstjax: error: could not write checkpoint step ") and str(ckpt) in lines[0]
        failed = int(lines[0].split("checkpoint step ")[1].split(" ")[0])
        assert failed > 10 and not (ckpt / str(failed)).is_dir()
        good = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
        _final_params(ckpt, good)  # the previous checkpoint is intact and readable
        (disk / "filler").unlink(missing_ok=True)  # space again: the same command resumes from it
        r = run_train([*args, "train.steps=30"], tmp_path, assets)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"resumed from {ckpt} at step {good}" in r.stdout


def test_a_disk_too_small_for_two_checkpoints_is_refused_before_training(tmp_path, assets):
    with _small_disk(tmp_path / "disk", "64k") as disk:
        r = run_train([*TINY, "train.steps=4", "model.width=0.5", f"train.ckpt_dir={disk / 'ck'}"], tmp_path, assets)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "MB free" in lines[0], r.stderr[-2000:]
        assert shutil.disk_usage(disk).used < 32 * 1024


def test_corrupt_latest_checkpoint_resumes_from_the_one_before(tmp_path, assets):
    args = [*TINY, "train.save_every=2", "run_name=c"]
    r = run_train([*args, "train.steps=6"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "runs" / "c" / "checkpoints"
    for f in (ckpt / "6" / "state").rglob("*"):  # truncate every array file of the newest step
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = run_train([*args, "train.steps=8"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint step 6" in r.stdout and "trying the one before it" in r.stdout
    assert f"resumed from {ckpt} at step 4" in r.stdout
    assert (ckpt / "8").is_dir()


def test_nonfinite_steps_are_skipped_or_stop_the_run_by_policy(tmp_path, assets):
    """An absurd learning rate overflows the network to inf/NaN within a few steps."""
    args = [*TINY, "train.lr=1e30", "train.steps=6", "train.save_every=2", "train.log_every=2"]
    r = run_train([*args, "train.nonfinite=stop", "run_name=s"], tmp_path, assets)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("train s")]
    assert r.returncode == 2 and len(lines) == 1 and "non-finite loss or gradient" in lines[0], r.stderr[-2000:]
    r = run_train([*args, "train.nonfinite=skip", "run_name=k"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "runs" / "k" / "summary.json").read_text())
    assert summary["nonfinite_steps"] >= 1
    for step in (2, 4, 6):  # every checkpoint written is finite
        params = _final_params(tmp_path / "runs" / "k" / "checkpoints", step)
        assert all(np.isfinite(v).all() for v in params.values())
    r = run_train([*args, "train.nonfinite=rollback", "run_name=r"], tmp_path, assets)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rolled back to checkpoint step" in r.stdout, r.stdout[-2000:]
