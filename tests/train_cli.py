"""The training CLI as the tests run it: a tiny network on the real photos, in a subprocess."""
import os
import subprocess
import sys

TINY = ["experiment=cpu_quick", "model.width=0.125", "model.num_residual=1", "data.size=32", "train.val_sizes=[64]",
        "loss.style_size=64", "train.samples=2", "train.log_every=2", "wandb=disabled"]


def train_env(assets, extra_env=None) -> dict:
    env = dict(os.environ, NSTJAX_ASSETS=str(assets), NPROC="8", **(extra_env or {}))
    env.pop("WANDB_MODE", None)  # the command's wandb= setting decides, not CI's WANDB_MODE
    return env


def run_train(args, cwd, assets, extra_env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nstjax.train", *args], cwd=cwd, env=train_env(assets, extra_env),
                          capture_output=True, text=True, timeout=timeout)


def start_train(args, cwd, assets) -> subprocess.Popen:
    """The same command in the background, for tests that signal or kill it mid-run."""
    return subprocess.Popen([sys.executable, "-m", "nstjax.train", *args], cwd=cwd, env=train_env(assets),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_error(r, needle):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip() and not ln.startswith("WARNING:absl")]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("nstjax: error:"), r.stderr[-3000:]
    assert needle in lines[0], lines[0]
