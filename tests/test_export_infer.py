"""Export a trained network, load it back, and stylize images, folders and animations.

One tiny TransformerNet (width 0.125, one residual block) is saved through Checkpointer exactly
as the trainer does; every path (artifact, stablehlo, checkpoint dir, CLI) must reproduce that
model's own outputs on real photos.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from omegaconf import OmegaConf
from PIL import Image, ImageSequence

from nstjax import color
from nstjax.config import InferConfig, checkpoint_step, load
from nstjax.training.checkpoint import Checkpointer
from nstjax.errors import NstjaxError
from nstjax.serving.artifact import read_artifact, write_artifact
from nstjax.serving.exporting import export_model
from nstjax.serving.loading import load_artifact
from nstjax.image import load_resized, to_uint8
from nstjax.serving.job import run_infer
from nstjax.networks import build_network

SIZE = 42  # not a multiple of 4: exercises the reflect pad + crop
MODEL = {"name": "johnson", "width": 0.125, "num_residual": 1, "dtype": "float32"}
STEP = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("export")
    model = build_network(MODEL, rngs=nnx.Rngs(0))
    # Perturb every param (instance-norm scales/biases start at exactly 1/0) so a swapped or
    # dropped parameter cannot go unnoticed.
    rng = np.random.default_rng(0)
    params = nnx.state(model, nnx.Param)
    noise = jax.tree.map(lambda a: 0.05 * rng.standard_normal(a.shape).astype(np.float32), params)
    nnx.update(model, jax.tree.map(np.add, params, noise))
    _, params = nnx.split(model, nnx.Param)
    state = {"params": params, "opt_state": optax.adam(1e-3).init(params), "rng": jax.random.key(0)}
    config = {"model": dict(MODEL), "style": {"name": "tiny"}, "train": {"steps": STEP}}
    ckpt = d / "run" / "checkpoints"
    with Checkpointer(ckpt, save_every=1) as ck:
        ck.save(STEP, state, data_state={"epoch": 0}, config=config, metrics={"loss": 1.0}, force=True)
    files = [photos / "val" / f"kodak24_kodim0{i}.jpg" for i in (1, 2)]
    content = np.stack([load_resized(f, SIZE) for f in files])
    ref = np.asarray(nnx.jit(lambda m, x: m(x))(model, content))
    art = d / "tiny.nstjax.npz"
    export_model(ckpt, art)
    return {"dir": d, "ckpt": ckpt, "files": files, "content": content, "ref": ref, "artifact": art}


def _cfg(**kw):
    """Settings as `python -m nstjax.infer` checks them (nstjax.config.InferConfig)."""
    base = {"model_path": None, "step": None, "input": None, "output": None, "size": SIZE, "batch": 2,
            "color": "none", "fps": None, "stablehlo": True, "alpha": 1.0, "overwrite": False, "tile": None,
            "overlap": 64, "start": 0.0, "duration": None}
    return load(InferConfig, OmegaConf.create({**base, **kw}))


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_params_artifact_reproduces_model(setup):
    art = setup["artifact"]
    params, meta, payloads = read_artifact(art)
    assert meta["kind"] == "params" and meta["model"] == MODEL and payloads == {}
    assert meta["source"]["step"] == STEP and meta["config"]["style"]["name"] == "tiny"
    assert "conv1/conv/kernel" in params and "res/0/in1/scale" in params
    assert not np.allclose(params["res/0/in1/scale"], 1.0)  # the perturbed weights were saved
    assert not [p for p in art.parent.iterdir() if p.name.endswith(".tmp")]
    stylize = load_artifact(art)
    y = stylize(setup["content"])
    assert y.shape == setup["content"].shape and y.dtype == np.float32
    np.testing.assert_allclose(y, setup["ref"], atol=1e-5)
    np.testing.assert_allclose(stylize(setup["content"][0]), setup["ref"][0], atol=1e-5)  # (H, W, 3)


def test_stablehlo_artifact_is_shape_polymorphic(setup):
    from jax import export

    art = setup["dir"] / "tiny.hlo.npz"
    meta = export_model(setup["artifact"], art, kind="stablehlo")  # an artifact converts too
    assert meta["source"]["step"] == STEP
    _, _, payloads = read_artifact(art)
    x_aval = export.deserialize(bytearray(payloads["stablehlo"])).in_avals[-1]
    assert [str(d) for d in x_aval.shape] == ["b", "4*h", "4*w", "3"]
    stylize = load_artifact(art)
    assert stylize.backend == "stablehlo"
    np.testing.assert_allclose(stylize(setup["content"]), setup["ref"], atol=1e-5)
    # Another batch and a spatial size needing asymmetric padding, without re-exporting.
    x = setup["content"][1:, :, 3:]  # (1, 42, 39, 3)
    want = load_artifact(setup["artifact"])(x)
    np.testing.assert_allclose(stylize(x), want, atol=1e-5)
    with pytest.raises(NstjaxError, match="too small"):
        stylize(np.zeros((1, 4, 9, 3), np.float32))


def test_infer_single_image_from_checkpoint_dir(setup, tmp_path):
    out = tmp_path / "one.png"
    r = run_infer(_cfg(model_path=str(setup["ckpt"]), input=str(setup["files"][0]), output=str(out)))
    assert r["images"] == 1 and r["backend"] == "params" and r["ms_per_image"] > 0
    got = _png(out)
    assert got.shape == (SIZE, SIZE, 3)
    assert np.abs(got - to_uint8(setup["ref"][0])).max() <= 1


def test_infer_directory_with_luminance(setup, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    names = [f.stem + ".png" for f in setup["files"]]  # lossless, so outputs compare to +-1
    for f, name in zip(setup["files"], names):
        Image.open(f).save(src / name)
    (src / "notes.txt").write_text("not an image")
    (src / "broken.jpg").write_bytes(setup["files"][0].read_bytes()[:300])  # unreadable: skipped, counted
    out = tmp_path / "out"
    r = run_infer(_cfg(model_path=str(setup["artifact"]), input=str(src), output=str(out), color="luminance"))
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert r["images"] == 2 and r["shapes"] == [[2, SIZE, SIZE, 3]] and r["skipped"] == 1
    for i, name in enumerate(names):
        want = color.transfer_luminance(np.clip(setup["ref"][i], 0, 1), setup["content"][i])
        assert np.abs(_png(out / name) - to_uint8(want)).max() <= 1
    assert np.abs(_png(out / names[0]) - _png(out / names[1])).mean() > 10


def test_infer_animated_gif_keeps_frames_and_durations(setup, tmp_path, photos):
    frames = [Image.fromarray(to_uint8(load_resized(photos / "val" / f"kodak24_kodim0{i}.jpg", SIZE)))
              for i in (3, 4, 5)]
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0)
    out = tmp_path / "styled.gif"
    r = run_infer(_cfg(model_path=str(setup["artifact"]), input=str(gif), output=str(out)))
    assert r["images"] == 3 and r["input_kind"] == "animation"
    assert r["shapes"] == [[2, SIZE, SIZE, 3]]  # the last frame is padded into the same executable
    with Image.open(gif) as im:
        inputs = [np.asarray(f.convert("RGB"), np.float32) / 255 for f in ImageSequence.Iterator(im)]
    stylize = load_artifact(setup["artifact"])
    # Batches of 2, as infer ran them (same executables, no extra compile).
    want = np.concatenate([stylize(np.stack(inputs[:2])), stylize(np.stack([inputs[2]] * 2))[:1]])
    want = np.clip(want, 0, 1)
    with Image.open(out) as im:
        assert im.n_frames == 3 and im.info.get("loop") == 0
        durations, got = [], []
        for f in ImageSequence.Iterator(im):
            durations.append(f.info["duration"])
            got.append(np.asarray(f.convert("RGB"), np.float32) / 255)
    assert durations == [100, 200, 300]
    for i in range(3):
        err = np.abs(got[i] - want[i]).mean()
        assert err < 0.05  # GIF's 256-colour palette only (measured ~0.027)
        others = [np.abs(got[i] - o).mean() for o in [inputs[i], *(want[j] for j in range(3) if j != i)]]
        assert min(others) > 4 * err  # stylized, and the frames are in order (measured > 0.3)


def test_bad_inputs_raise_one_clear_error(setup, tmp_path):
    photo = str(setup["files"][0])
    art = setup["artifact"]
    (tmp_path / "random.npz").write_bytes(os.urandom(2000))
    (tmp_path / "half.npz").write_bytes(art.read_bytes()[: art.stat().st_size // 2])
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    (tmp_path / "notes.xyz").write_text("x")
    (tmp_path / "empty").mkdir()
    params, meta, _ = read_artifact(art)
    params["res/0/conv1/conv/kernel"] = params["res/0/conv1/conv/kernel"][:, :, :, :1]
    write_artifact(tmp_path / "wrong.npz", params, meta)
    cases = {
        "missing model": (dict(model_path=str(tmp_path / "nope.npz")), "nope.npz"),
        "dir not a checkpoint": (dict(model_path=str(setup["files"][0].parent)), "no finished checkpoint"),
        "random bytes": (dict(model_path=str(tmp_path / "random.npz")), "random.npz"),
        "truncated": (dict(model_path=str(tmp_path / "half.npz")), "half.npz"),
        "foreign npz": (dict(model_path=str(tmp_path / "other.npz")), "not an nstjax artifact"),
        "wrong shapes": (dict(model_path=str(tmp_path / "wrong.npz")), "res/0/conv1/conv/kernel"),
        "overwrite input": (dict(output=photo), "is the input"),
        "missing input": (dict(input=str(tmp_path / "gone.jpg")), "gone.jpg"),
        "unknown ext": (dict(input=str(tmp_path / "notes.xyz")), ".xyz"),
        "empty dir": (dict(input=str(tmp_path / "empty")), "no image files"),
        "bad output": (dict(output=str(tmp_path / "o.docx")), "o.docx"),
        "bad color": (dict(color="sepia"), "color"),
        "bad batch": (dict(batch=0), "batch"),
        "step on file": (dict(step=3), "step=3"),
        "no model": (dict(model_path=None), "model_path"),
    }
    for name, (kw, needle) in cases.items():
        with pytest.raises(NstjaxError) as e:  # refused when checked, or when run
            run_infer(_cfg(**{"model_path": str(art), "input": photo, "output": str(tmp_path / "o.png"), **kw}))
        assert needle in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    with pytest.raises(NstjaxError, match="no step 9"):
        run_infer(_cfg(model_path=str(setup["ckpt"]), step=9, input=photo, output=str(tmp_path / "o.png")))
    with pytest.raises(NstjaxError, match="format"):
        export_model(setup["ckpt"], tmp_path / "x.npz", kind="tflite")
    with pytest.raises(NstjaxError, match="missing_ckpt"):
        export_model(tmp_path / "missing_ckpt", tmp_path / "x.npz")
    (tmp_path / "clip.mp4").write_text("these are meeting notes, not a video\n" * 20)  # text named .mp4
    for output in ("o.gif", "o.mp4"):
        with pytest.raises(NstjaxError, match="not a readable video") as e:
            run_infer(_cfg(model_path=str(art), input=str(tmp_path / "clip.mp4"), output=str(tmp_path / output)))
        assert "clip.mp4" in str(e.value) and "\n" not in str(e.value)


def _cli(module, args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_export_stablehlo_then_infer_in_a_fresh_process(setup, tmp_path):
    art = tmp_path / "m.hlo.npz"
    r = _cli("nstjax.export", [f"checkpoint={setup['ckpt']}", f"output={art}", "format=stablehlo",
                               f"step={STEP}"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stablehlo" in r.stdout and art.is_file()
    out = tmp_path / "o.png"
    r = _cli("nstjax.infer", [f"model_path={art}", f"input={setup['files'][0]}", f"output={out}",
                              f"size={SIZE}"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ms/image" in r.stdout and "stablehlo" in r.stdout
    assert np.abs(_png(out) - to_uint8(setup["ref"][0])).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.hlo.npz", "o.png"]  # no Hydra clutter


def test_cli_bad_input_is_one_line(setup, tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    r = _cli("nstjax.infer", [f"model_path={tmp_path / 'broken.npz'}", f"input={setup['files'][0]}",
                              f"output={tmp_path / 'o.png'}"], tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nstjax: error:"), r.stderr[-1500:]
    assert "broken.npz" in lines[0] and "Traceback" not in r.stderr


def test_alpha_blends_the_style_with_the_photo(setup, tmp_path):
    photo = str(setup["files"][0])
    outs = {}
    for alpha in (1.0, 0.5, 0.0):
        for mode in ("none", "luminance"):
            out = tmp_path / f"a{alpha}_{mode}.png"
            run_infer(_cfg(model_path=str(setup["artifact"]), input=photo, output=str(out), alpha=alpha, color=mode))
            outs[alpha, mode] = _png(out).astype(np.float64)
    content = to_uint8(setup["content"][0]).astype(np.float64)
    for mode in ("none", "luminance"):
        assert np.abs(outs[0.0, mode] - content).max() <= 1  # alpha=0: the photo itself
        assert np.abs(outs[1.0, mode] - content).mean() > 10  # alpha=1: stylized
        half = 0.5 * (outs[1.0, mode] + content)
        assert np.abs(outs[0.5, mode] - half).max() <= 1.5  # halfway, up to 8-bit rounding
    with pytest.raises(NstjaxError, match="alpha"):
        run_infer(_cfg(model_path=str(setup["artifact"]), input=photo, output=str(tmp_path / "x.png"), alpha=1.5))


def test_folders_are_recursive_and_existing_outputs_are_kept(setup, tmp_path):
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    Image.open(setup["files"][0]).save(src / "a.png")
    Image.open(setup["files"][1]).save(src / "sub" / "deeper" / "b.png")
    out = tmp_path / "out"
    cfg = dict(model_path=str(setup["artifact"]), input=str(src), output=str(out))
    r = run_infer(_cfg(**cfg))
    assert r["images"] == 2 and (out / "a.png").is_file() and (out / "sub" / "deeper" / "b.png").is_file()
    stamp = (out / "a.png").stat().st_mtime_ns
    (out / "sub" / "deeper" / "b.png").unlink()
    r = run_infer(_cfg(**cfg))  # a rerun does only what is missing
    assert r["images"] == 1 and r["existing"] == 1 and (out / "a.png").stat().st_mtime_ns == stamp
    assert (out / "sub" / "deeper" / "b.png").is_file()
    r = run_infer(_cfg(**cfg, overwrite=True))
    assert r["images"] == 2 and r["existing"] == 0


def test_export_step_latest_best_and_number(setup, tmp_path):
    model = build_network(MODEL, rngs=nnx.Rngs(1))
    _, params = nnx.split(model, nnx.Param)
    ck = tmp_path / "ck"
    with Checkpointer(ck, save_every=1, keep_last=5) as c:
        for step, val in ((1, 3.0), (2, 1.0), (3, 2.0)):
            shifted = jax.tree.map(lambda a: a + step, params)
            state = {"params": shifted, "opt_state": optax.adam(1e-3).init(shifted), "rng": jax.random.key(0)}
            c.save(step, state, data_state={}, config={"model": dict(MODEL)}, metrics={"val_loss": val}, force=True)
    for step, want in (("latest", 3), ("best", 2), (1, 1)):
        meta = export_model(ck, tmp_path / f"{step}.npz", step=checkpoint_step(step))
        assert meta["source"]["step"] == want, step
    with pytest.raises(NstjaxError, match="step: expected latest, best"):
        checkpoint_step("newest")
    with pytest.raises(NstjaxError, match="records val_loss"):
        export_model(setup["ckpt"], tmp_path / "x.npz", step="best")  # its checkpoint has no val_loss


def _seam_ratio(tiled: np.ndarray, whole: np.ndarray, cuts: list[int]) -> float:
    """How much the tiled output's departure from the whole-image output jumps on the rows
    where tiles meet, relative to its row-to-row change elsewhere (1: no seam)."""
    d = (tiled - whole).astype(np.float64)
    g = np.abs(np.diff(d, axis=0)).mean(axis=(1, 2))  # row y -> y+1
    at = [c - 1 for c in cuts if 0 < c < d.shape[0]]
    return float(g[at].mean() / np.delete(g, at).mean())


def test_tiles_blend_without_visible_seams(setup, tmp_path, photos):
    from nstjax.serving.loading import load_artifact
    from nstjax.serving.tiling import stylize_tiled, tile_starts

    img = load_resized(photos / "val" / "kodak24_kodim05.jpg", 400)  # 400x400
    stylize = load_artifact(setup["artifact"])
    whole = np.clip(stylize(img), 0, 1)
    ratios = {}
    for tile, overlap in ((128, 32), (200, 48), (128, 0), (200, 0)):
        tiled = stylize_tiled(stylize, img, tile=tile, overlap=overlap, batch=4)
        assert tiled.shape == img.shape and 0 <= tiled.min() and tiled.max() <= 1
        starts = tile_starts(400, tile, tile - overlap)
        cuts = sorted({s + tile for s in starts[:-1]} | set(starts[1:]))  # where a tile's edge lies
        ratios[tile, overlap] = _seam_ratio(tiled, whole, cuts)
    assert ratios[128, 32] < 1.2 and ratios[200, 48] < 1.2, ratios  # feathered: no larger than elsewhere
    assert ratios[128, 0] > 1.5 and ratios[200, 0] > 1.5, ratios  # hard cuts do show: the check can fail
    assert len(stylize.compile_seconds) <= 3  # the whole image, and one shape per tile size


def test_tile_auto_tiles_when_the_budget_is_too_small_for_the_whole_image(setup, tmp_path, photos, monkeypatch):
    from nstjax.serving.loading import load_artifact
    from nstjax.serving.memory import MB, network_bytes, plan_tiles
    from nstjax.serving.tiling import tile_starts

    img = load_resized(photos / "val" / "kodak24_kodim05.jpg", 400)  # 400x400
    src = tmp_path / "photo.png"
    Image.fromarray(to_uint8(img)).save(src)
    stylize = load_artifact(setup["artifact"])
    whole_bytes = network_bytes(stylize, (1, 400, 400, 3))
    small = network_bytes(stylize, (2, 64, 64, 3))
    assert small < whole_bytes / 4  # measured, and growing with the pixels
    budget = 0.5 * whole_bytes
    plan = plan_tiles(stylize, 400, 400, batch=2, overlap=48, budget=int(budget))
    assert plan.tile is not None and 2 * 48 < plan.tile < 400 and plan.bytes <= budget
    assert network_bytes(stylize, (2, plan.tile + 16, plan.tile + 16, 3)) > budget  # the largest that fits
    # The job: tiles of that size, blended without a seam (the metric of the test above).
    out = tmp_path / "auto.png"
    r = run_infer(_cfg(model_path=str(setup["artifact"]), input=str(src), output=str(out), size=None, batch=2,
                       tile="auto", overlap=48, memory_budget=budget / MB))
    assert r["tiles"] == {"400x400": {"tile": plan.tile, "network_mb": plan.bytes / MB, "budget_mb": budget / MB}}
    assert r["shapes"] == [[2, plan.tile, plan.tile, 3]]
    tiled = _png(out).astype(np.float32) / 255
    whole = np.clip(stylize(np.asarray(Image.open(src).convert("RGB"), np.float32) / 255), 0, 1)
    starts = tile_starts(400, plan.tile, plan.tile - 48)
    cuts = sorted({s + plan.tile for s in starts[:-1]} | set(starts[1:]))
    assert _seam_ratio(tiled, whole, cuts) < 1.2
    # A budget the whole image fits in runs it whole; the budget comes from the environment too.
    monkeypatch.setenv("NSTJAX_MEMORY_BUDGET", str(2 * whole_bytes / MB))
    r = run_infer(_cfg(model_path=str(setup["artifact"]), input=str(src), output=str(tmp_path / "w.png"), size=None,
                       tile="auto", overwrite=True))
    assert r["tiles"]["400x400"]["tile"] is None and r["shapes"] == [[1, 400, 400, 3]]
    np.testing.assert_array_equal(_png(tmp_path / "w.png"), to_uint8(whole).astype(np.int16))


def test_tile_auto_refuses_a_budget_too_small_for_any_tile(setup, tmp_path, photos, monkeypatch):
    src = photos / "val" / "kodak24_kodim05.jpg"
    with pytest.raises(NstjaxError, match=r"memory_budget: 1 MB is too small for even a minimal tile \(112x112 px"):
        run_infer(_cfg(model_path=str(setup["artifact"]), input=str(src), output=str(tmp_path / "o.png"), size=None,
                       tile="auto", overlap=48, memory_budget=1.0))
    monkeypatch.setenv("NSTJAX_MEMORY_BUDGET", "lots")
    with pytest.raises(NstjaxError, match="NSTJAX_MEMORY_BUDGET: expected a positive number of MB, got 'lots'"):
        run_infer(_cfg(model_path=str(setup["artifact"]), input=str(src), output=str(tmp_path / "o.png"), size=None,
                       tile="auto"))
    for bad, match in ((dict(tile="big"), "tile: expected a tile size in px, auto or null, got 'big'"),
                       (dict(tile="auto", memory_budget=-5), "memory_budget: expected a positive number of MB")):
        with pytest.raises(NstjaxError, match=match):
            _cfg(model_path="m.npz", input="i.png", output="o.png", **bad)
    r = subprocess.run([sys.executable, "-m", "nstjax.infer", f"model_path={setup['artifact']}", f"input={src}",
                        f"output={tmp_path / 'o.png'}", "tile=auto", "memory_budget=1"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 2 and r.stderr.strip().startswith("nstjax: error: memory_budget: 1 MB is too small"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_8k_image_stylizes_in_tiles_within_memory(setup, tmp_path, photos):
    from PIL import Image

    big = tmp_path / "8k.jpg"
    Image.open(photos / "val" / "kodak24_kodim05.jpg").resize((7680, 4320), Image.Resampling.BICUBIC).save(big, quality=90)
    out = tmp_path / "8k_out.jpg"
    # The CLI in a child that reports its own peak RSS when it exits.
    probe = ("import atexit, resource, runpy, sys; atexit.register(lambda: print('MAXRSS_KB', "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)); sys.argv = sys.argv[1:]; "
             "runpy.run_module('nstjax.infer', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", probe, "nstjax.infer", f"model_path={setup['artifact']}", f"input={big}",
                        f"output={out}", "tile=512", "overlap=64", "batch=4"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-2000:]
    peak_mb = int(r.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert Image.open(out).size == (7680, 4320)
    assert "512x512" in r.stdout  # every tile ran through one executable
    assert peak_mb < 6000, peak_mb  # whole-image float32 buffers are ~0.4 GB each; no 8K network activations


def _make_clip(path, photos, fps=8, per_photo=4, seconds_of_audio=1.5):
    """A real H.264 clip of validation photos with an AAC audio track (a 440 Hz tone)."""
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=44100, layout="mono")
        i = 0
        for p in photos:
            rgb = np.asarray(Image.open(p).convert("RGB").resize((64, 48)))
            for _ in range(per_photo):
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                f.pts, i = i, i + 1
                out.mux(v.encode(f))
        out.mux(v.encode())
        t = np.arange(int(44100 * seconds_of_audio)) / 44100
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k in range(0, len(wave) - 1023, 1024):
            af = av.AudioFrame.from_ndarray(wave[None, k:k + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, k
            out.mux(a.encode(af))
        out.mux(a.encode())


def _streams(path):
    import av

    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0] if c.streams.audio else None
        info = {"fps": float(v.average_rate), "frames": v.frames, "size": (v.codec_context.width, v.codec_context.height),
                "video_s": float(v.duration * v.time_base)}
        if a is not None:
            info |= {"audio_codec": a.codec_context.name, "audio_rate": a.rate, "audio_s": float(a.duration * a.time_base)}
        return info


def test_video_keeps_rate_size_frames_and_audio(setup, tmp_path, photos):
    from nstjax.serving.loading import load_artifact
    from nstjax.serving.video import read_frames

    clip = tmp_path / "clip.mp4"
    _make_clip(clip, [photos / "val" / f"kodak24_kodim0{i}.jpg" for i in (1, 2, 3)])
    src = _streams(clip)
    out = tmp_path / "clip_styled.mp4"
    r = run_infer(_cfg(model_path=str(setup["artifact"]), input=str(clip), output=str(out), size=None, batch=4))
    got = _streams(out)
    assert got["fps"] == src["fps"] == 8 and got["frames"] == src["frames"] == 12 and got["size"] == (64, 48)
    assert got["audio_codec"] == "aac" and got["audio_rate"] == 44100  # the audio stream, copied
    assert abs(got["audio_s"] - src["audio_s"]) < 0.05 and r["audio_packets"] > 50
    assert r["compiles"] == 1 and r["images"] == 12  # every batch of frames through one executable
    # Each frame is the network's output for that input frame (up to H.264 at crf 18).
    stylize = load_artifact(setup["artifact"])
    frames_in = np.stack(list(read_frames(clip))).astype(np.float32) / 255
    frames_out = np.stack(list(read_frames(out))).astype(np.float32) / 255
    want = np.clip(stylize(frames_in), 0, 1)
    luma = np.array([0.299, 0.587, 0.114], np.float32)  # yuv420p keeps luma whole, chroma at half size
    err = np.abs(frames_out @ luma - want @ luma).mean()
    assert err < 0.03, err
    assert np.abs(frames_out @ luma - np.roll(want, 4, 0) @ luma).mean() > 5 * err  # frames in order
    assert np.abs(frames_out - frames_in).mean() > 0.1  # stylized, not copied
    # A cut: from 0.5 s, 0.5 s long; its audio is cut with it.
    cut = tmp_path / "cut.mp4"
    run_infer(_cfg(model_path=str(setup["artifact"]), input=str(clip), output=str(cut), size=None, start=0.5,
                   duration=0.5))
    got = _streams(cut)
    assert got["frames"] == 4 and abs(got["video_s"] - 0.5) < 1e-6 and abs(got["audio_s"] - 0.5) < 0.05
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_net_size_runs_the_network_at_its_scale_and_keeps_the_output_size(setup, tmp_path, assets):
    from nstjax.image import fit_size, load_image, resize

    photo = assets / "data" / "content" / "chicago.jpg"  # 712x474: not square, not a multiple of 4
    x = load_image(photo)
    stylize = load_artifact(setup["artifact"])
    outs = {}
    for net_size in (96, None):
        out = tmp_path / f"c_{net_size}.png"
        r = run_infer(_cfg(model_path=str(setup["artifact"]), input=str(photo), output=str(out), size=None,
                           net_size=net_size))
        outs[net_size] = _png(out)
        assert outs[net_size].shape == x.shape  # the output keeps the photo's size either way
    small_hw = fit_size(x.shape[:2], 96)
    assert r["images"] == 1
    want = resize(stylize(resize(x, small_hw)), x.shape[:2])  # the network at 96 px, resized back
    assert np.abs(outs[96] - to_uint8(want)).max() <= 1
    # A different stroke scale is a different image, not a resampling of the full-size one.
    assert np.abs(outs[96] - outs[None]).mean() > 5


def test_float16_params_halve_the_artifact_and_keep_the_outputs(setup, tmp_path):
    half = tmp_path / "half.nstjax.npz"
    meta = export_model(setup["ckpt"], half, params_dtype="float16")
    params, header, _ = read_artifact(half)
    assert header["params_dtype"] == "float16" and all(v.dtype == np.float32 for v in params.values())
    with np.load(half) as z:  # stored as float16 on disk
        assert all(z[k].dtype == np.float16 for k in z.files if k.startswith("params/"))
    assert half.stat().st_size < 0.6 * setup["artifact"].stat().st_size
    got = np.clip(load_artifact(half)(setup["content"]), 0, 1)
    want = np.clip(setup["ref"], 0, 1)
    assert np.abs(got - want).max() < 2 / 255, np.abs(got - want).max()  # float16 rounding of the weights
    assert meta["num_params"] > 0
    with pytest.raises(NstjaxError, match="params_dtype=float16 applies to .npz"):
        export_model(setup["ckpt"], tmp_path / "m.onnx", kind="onnx", params_dtype="float16")


def test_compute_dtype_runs_the_network_in_bfloat16_close_to_float32(setup, tmp_path):
    from nstjax.serving.loading import load_stylizer

    ref = np.clip(setup["ref"], 0, 1)
    hlo = setup["dir"] / "tiny.hlo.npz"
    if not hlo.exists():
        export_model(setup["artifact"], hlo, kind="stablehlo")
    for path in (setup["ckpt"], setup["artifact"], hlo):
        half = load_stylizer(path, dtype="bfloat16")
        assert half.model["dtype"] == "bfloat16" and half.backend == "params"  # stablehlo: rebuilt
        got = np.clip(half(setup["content"]), 0, 1)
        assert got.dtype == np.float32 and got.shape == ref.shape
        d = np.abs(got - ref)  # bfloat16's 8-bit mantissa, amplified by this random net's contrast
        assert 0 < d.mean() < 3 / 255 and np.quantile(d, 0.99) < 12 / 255, (path, d.mean(), np.quantile(d, 0.99))
    # auto on CPU: as trained, bit for bit, and a stablehlo artifact still runs its own function
    auto = load_stylizer(hlo, dtype="auto")
    assert auto.backend == "stablehlo" and auto.model["dtype"] == "float32"
    # on_device: the same network without host copies; padded artifacts want padded sides
    on_device = load_stylizer(setup["ckpt"]).on_device(jax.device_put(setup["content"]))
    assert isinstance(on_device, jax.Array)
    np.testing.assert_allclose(np.asarray(on_device), setup["ref"], atol=1e-5)
    with pytest.raises(NstjaxError, match="multiples of 4"):
        auto.on_device(jax.device_put(setup["content"]))  # 42 px
    np.testing.assert_array_equal(load_stylizer(setup["ckpt"], dtype="auto")(setup["content"]),
                                  load_stylizer(setup["ckpt"])(setup["content"]))
    out = tmp_path / "bf16.png"
    r = run_infer(_cfg(model_path=str(setup["artifact"]), input=str(setup["files"][0]), output=str(out),
                       dtype="bfloat16"))
    assert r["model"]["dtype"] == "bfloat16" and 0 < np.abs(_png(out) - to_uint8(ref[0])).mean() < 3
    with pytest.raises(NstjaxError, match="dtype: expected one of auto, model, float32"):
        _cfg(model_path="m.npz", input="a.jpg", output="b.jpg", dtype="half")
