"""pytorch/examples' TransformerNet weights (.pth) imported without torch, checked against torch.

The fixtures were written by real torch with `benchmarks/make_pth_fixture.py` (benchmark env):
a small TransformerNet in torch's zip format and in its legacy format with InstanceNorm
running statistics, and torch's own output on a real photo.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nstjax
from nstjax.errors import NstjaxError
from nstjax.serving.artifact import read_artifact
from nstjax.serving.exporting import export_model
from nstjax.serving.torch_import import read_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch"
IO = np.load(FIXTURES / "tiny_io.npz")


@pytest.mark.parametrize("name", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_imported_weights_reproduce_torch_on_a_real_photo(name, tmp_path):
    state = read_state_dict(FIXTURES / name)
    assert state["conv1.conv2d.weight"].shape == (4, 3, 9, 9) and state["conv1.conv2d.weight"].dtype == np.float32
    assert ("in1.running_mean" in state) == (name == "tiny_legacy.pth")  # old files carry unused running stats
    stylize = nstjax.load_stylizer(FIXTURES / name)
    assert stylize.model["pixel_scale"] == 255.0 and stylize.model["num_residual"] == 2
    got, want = stylize(IO["input"]), IO["torch_output"]
    assert got.shape == want.shape == (44, 52, 3)
    np.testing.assert_allclose(got, want, atol=2e-4)  # 0.05 of a pixel level
    # ...and as an nstjax artifact, from the CLI, then inference
    art = tmp_path / "tiny.nstjax.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "nstjax.export", f"checkpoint={FIXTURES / name}", f"output={art}"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _, meta, _ = read_artifact(art)
    assert meta["source"]["torch_state_dict"].endswith(name)
    np.testing.assert_allclose(nstjax.load_stylizer(art)(IO["input"]), want, atol=2e-4)


def _zip_with_pickle(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_no_code_in_a_pth_file_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = _zip_with_pickle(tmp_path / "evil.pth", pickle.dumps({"w": _Evil()}))
    with pytest.raises(NstjaxError, match="refusing to load"):
        read_state_dict(evil)
    assert not (tmp_path / "pwned").exists()
    legacy = tmp_path / "evil_legacy.pth"
    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {}):
        pickle.dump(obj, buf)
    pickle.dump(_Evil(), buf)
    legacy.write_bytes(buf.getvalue())
    with pytest.raises(NstjaxError, match="refusing to load"):
        read_state_dict(legacy)
    assert not (tmp_path / "pwned").exists()


def test_bad_pth_files_are_one_line(tmp_path):
    good = (FIXTURES / "tiny_zip.pth").read_bytes()
    cases = {
        "truncated.pth": good[: len(good) // 2],
        **{f"random{i}.pth": np.random.default_rng(i).bytes(500) for i in range(300)},  # some ask for 2**63 bytes
        "empty.pth": b"",
        "legacy_cut.pth": (FIXTURES / "tiny_legacy.pth").read_bytes()[:-1000],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NstjaxError) as e:
            nstjax.load_stylizer(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    other = _zip_with_pickle(tmp_path / "other.pth", pickle.dumps({"fc.weight": 1.0}))
    with pytest.raises(NstjaxError):
        export_model(other, tmp_path / "x.npz")
