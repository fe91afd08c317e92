"""Multi-process training on localhost: 2 processes (one CPU device each) on JAX's distributed
runtime equal 1 process on the same global batch, and their checkpoint restores into 1 process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

TINY = ["experiment=cpu_quick", "model.width=0.125", "model.num_residual=1", "data.size=32", "train.val_sizes=[64]",
        "loss.style_size=64", "train.samples=2", "train.log_every=2", "wandb=offline", "train.sample_every=0"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(assets: Path, **extra: str) -> dict:
    env = dict(os.environ, NSTJAX_ASSETS=str(assets), WANDB_MODE="offline", NPROC="8", JAX_PLATFORMS="cpu", **extra)
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    return env


def _run_processes(cmds: list[list[str]], cwd: Path, env: dict, timeout: int = 420) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    finally:
        for p in procs:
            p.kill()
    return out


STEP = textwrap.dedent("""
    import sys, json
    import numpy as np
    pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    from nstjax.config import DistributedConfig
    from nstjax.training import distributed
    if n > 1:
        distributed.initialize(DistributedConfig(enabled="true", coordinator_address=f"localhost:{port}",
                                                 num_processes=n, process_id=pid))
    import jax, optax
    from flax import nnx
    from nstjax.image import load_resized
    from nstjax.networks import build_network
    from nstjax.perceptual import Encoder, PerceptualLoss
    from nstjax.training.data import load_val_images
    from nstjax.training.prefetch import prefetch_to_device
    from nstjax.training.trainer import Trainer, make_mesh
    from nstjax.vgg import load_vgg19
    import os
    assets = os.environ["NSTJAX_ASSETS"]
    assert jax.device_count() == n and jax.local_device_count() == 1
    vgg = load_vgg19()
    loss = PerceptualLoss({"relu2_2": 1.0}, {"relu1_1": 1.0, "relu2_1": 1.0}, {"content": 1.0, "style": 10.0, "tv": 1e-5})
    encoder = Encoder(vgg, loss.layers)
    grams = loss.style_targets(encoder, [load_resized(assets + "/data/styles/mosaic.jpg", 48)])
    model = build_network({"name": "johnson", "width": 0.125, "num_residual": 1}, rngs=nnx.Rngs(0))
    tr = Trainer(model, encoder, loss, optax.sgd(1e-9), grams, make_mesh())
    batch = load_val_images(assets + "/data/photos/val", 32, limit=4)  # the global batch
    local = np.split(batch, n)[pid]  # this process's rows of it
    x = next(prefetch_to_device(iter([local]), 1, tr.data_sharding))
    assert x.shape == batch.shape
    before = jax.tree.map(np.asarray, tr.params)
    terms = tr.step(x)
    delta = jax.tree.map(lambda a, b: np.asarray(a) - b, tr.params, before)
    if pid == 0:
        leaves = jax.tree.leaves(delta)
        np.savez(out, total=float(terms["total"]), **{str(i): a for i, a in enumerate(leaves)})
    print("OK", pid, flush=True)
""")


def test_two_processes_equal_one_process_on_the_same_global_batch(assets, tmp_path):
    env, port = _env(assets), _port()
    two = _run_processes([[sys.executable, "-c", STEP, str(i), "2", str(port), str(tmp_path / "two.npz")]
                          for i in range(2)], tmp_path, env)
    for r in two:
        assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    one = subprocess.run([sys.executable, "-c", STEP, "0", "1", "0", str(tmp_path / "one.npz")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=420)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_allclose(a["total"], b["total"], rtol=1e-5)
    scale = max(float(np.abs(a[k]).max()) for k in a.files if k != "total")
    err = max(float(np.abs(a[k] - b[k]).max()) for k in a.files if k != "total")
    assert scale > 0 and err / scale < 1e-4, err / scale


def test_two_process_training_run_and_its_checkpoint_restored_by_one_process(assets, tmp_path):
    port = _port()
    args = [*TINY, "train.steps=4", "train.save_every=2", "run_name=dist"]
    cmds = [[sys.executable, "-m", "nstjax.train", *args, f"distributed.coordinator_address=localhost:{port}",
             "distributed.num_processes=2", f"distributed.process_id={i}"] for i in range(2)]
    results = _run_processes(cmds, tmp_path, _env(assets))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "dist"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4 and summary["processes"] == 2 and summary["devices"] == 2
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # W&B from process 0 only
    ck = run / "checkpoints"
    assert {"2", "4"} <= {p.name for p in ck.iterdir()}
    meta = json.loads((ck / "4" / "meta" / "metadata").read_text())
    per_process = meta["data_state"]["value"]["processes"]
    assert len(per_process) == 2 and all(p["grain"] for p in per_process)  # each process: its own shard position
    # One process continues the 2-process run: model and optimizer exactly, data in a new pass.
    r = subprocess.run([sys.executable, "-m", "nstjax.train", *args[:-2], "train.steps=6", "run_name=dist"],
                       cwd=tmp_path, env=_env(assets), capture_output=True, text=True, timeout=420)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 4" in r.stdout
    assert "data position is from 2 process(es)" in r.stdout + r.stderr
    assert json.loads((run / "summary.json").read_text())["step"] == 6
