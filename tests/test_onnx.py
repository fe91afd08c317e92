"""`format=onnx`: a standalone ONNX model, run by onnxruntime, checked against the JAX network.

One small TransformerNet, saved through Checkpointer as the trainer does (every parameter
perturbed), is exported once; from that one file ONNX Runtime must reproduce the JAX
Stylizer's raw output on real photos at several sizes, odd ones and batch 2 included.
pytorch/examples' weights (the real-torch fixtures) go through the CLI to ONNX and must still
match torch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import dataclasses
from pathlib import Path

import jax
import numpy as np
import onnx
import optax
import pytest
from flax import nnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import nstjax
from nstjax.config import InferConfig, load
from nstjax.errors import NstjaxError
from nstjax.image import load_image, resize, to_uint8
from nstjax.networks import NETWORKS, build_network
from nstjax.networks.johnson import upsample_nearest2x
from nstjax.ops.onnx_graph import GraphBuilder
from nstjax.serving.exporting import export_model
from nstjax.serving.job import run_infer
from nstjax.serving.onnx_model import OnnxStylizer
from nstjax.training.checkpoint import Checkpointer

MODEL = {"name": "johnson", "width": 0.25, "num_residual": 2, "dtype": "float32"}
STEP = 7
# ONNX Runtime's float32 convolutions and instance norms round differently from XLA's. This
# perturbed net's raw outputs span several units, so float32 rounding alone reaches 1e-5; both
# runtimes are that far from a float64 evaluation of the graph (measured values: README).
ATOL = 1e-4  # 0.03 of an 8-bit level
TORCH = Path(__file__).resolve().parent / "fixtures" / "torch"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    model = build_network(MODEL, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(3)  # perturbed: a swapped or dropped parameter cannot go unnoticed
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(np.float32), params))
    _, params = nnx.split(model, nnx.Param)
    state = {"params": params, "opt_state": optax.adam(1e-3).init(params), "rng": jax.random.key(0)}
    ckpt = d / "run" / "checkpoints"
    with Checkpointer(ckpt, save_every=1) as ck:
        ck.save(STEP, state, data_state={"epoch": 0}, config={"model": dict(MODEL), "style": {"name": "tiny"}},
                metrics={"loss": 1.0}, force=True)
    path = d / "tiny.onnx"
    meta = export_model(d / "run", path, kind="onnx")  # a run directory, as the CLI takes it
    return {"dir": d, "ckpt": ckpt, "path": path, "meta": meta, "jax": nstjax.load_stylizer(ckpt),
            "ort": nstjax.load_stylizer(path)}


def _photos(photos: Path, ids: list[int], hw: tuple[int, int]) -> np.ndarray:
    return np.stack([resize(load_image(photos / "val" / f"kodak24_kodim{i:02d}.jpg"), hw) for i in ids])


def _dims(value_info: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_the_onnx_file_is_standalone_with_dynamic_dims_and_no_resize(exported):
    model = onnx.load(exported["path"])
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Resize", "Upsample"} and "DepthToSpace" in ops
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["stylized"]
    assert _dims(model.graph.input[0]) == _dims(model.graph.output[0]) == ["batch", "height", "width", 3]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)] and model.ir_version == 8
    assert all(t.data_type == TensorProto.FLOAT for t in model.graph.initializer if t.dims and len(t.dims) > 1)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["nstjax"])
    assert meta["kind"] == "onnx" and meta["model"] == MODEL and meta["source"]["step"] == STEP
    assert meta["config"]["style"]["name"] == "tiny" and meta["onnx"]["opset"] == 17 and meta["onnx"]["min_side"] == 5
    assert exported["meta"] == meta
    onnx.checker.check_model(model, full_check=True)
    assert sorted(p.name for p in exported["dir"].iterdir()) == ["run", "tiny.onnx"]  # no temp file left


def test_onnxruntime_equals_the_jax_network_on_real_photos(exported, photos):
    ort, ref = exported["ort"], exported["jax"]
    assert isinstance(ort, OnnxStylizer) and ort.backend == "onnx" and ort.model == MODEL
    worst = {}
    for n, h, w in ((1, 333, 250), (1, 250, 333), (2, 64, 48), (2, 97, 131), (1, 42, 42), (1, 5, 9)):
        x = _photos(photos, [1, 2][:n], (h, w))
        got, want = ort(x), ref(x)
        assert got.shape == x.shape and got.dtype == np.float32
        worst[n, h, w] = float(np.abs(got - want).max())
        assert np.abs(got - x).mean() > 0.05  # stylized, not passed through
    print("max |onnxruntime - jax|:", worst)
    assert max(worst.values()) < ATOL, worst
    np.testing.assert_allclose(ort(x[0]), ref(x[0]), atol=ATOL)  # (H, W, 3) in, (H, W, 3) out
    assert len(ort.compile_seconds) == 6  # every shape from the one file
    with pytest.raises(NstjaxError, match=r"too small .*tiny\.onnx.*>= 5 px"):
        ort(_photos(photos, [3], (4, 9)))


def test_reference_evaluator_agrees_on_a_small_photo(exported, photos):
    from onnx.reference import ReferenceEvaluator

    x = _photos(photos, [4], (23, 18))
    (got,) = ReferenceEvaluator(str(exported["path"])).run(None, {"image": x})
    print("max |ReferenceEvaluator - runtime|:", {k: float(np.abs(got - exported[k](x)).max()) for k in ("jax", "ort")})
    np.testing.assert_allclose(got, exported["jax"](x), atol=ATOL)
    np.testing.assert_allclose(got, exported["ort"](x), atol=ATOL)
    # The same graph in float64: JAX and ONNX Runtime differ from it by float32 rounding only.
    model = onnx.load(exported["path"])
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    (exact,) = ReferenceEvaluator(model).run(None, {"image": x.astype(np.float64)})
    errors = {k: float(np.abs(exported[k](x) - exact).max()) for k in ("jax", "ort")}
    print("max |runtime - float64 graph|:", errors)
    assert max(errors.values()) < ATOL, errors


def test_the_upsample_is_upsample_nearest2x(photos):
    from onnx.reference import ReferenceEvaluator
    import onnxruntime

    g = GraphBuilder({})
    g.op("Identity", g.upsample_nearest2x("x"), out="y")
    dims = ["n", "c", "h", "w"]
    graph = helper.make_graph(g.nodes, "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = _photos(photos, [5, 6], (13, 10))  # NHWC
    want = np.asarray(upsample_nearest2x(x)).transpose(0, 3, 1, 2)
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for run in (onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]),
                ReferenceEvaluator(model)):
        (got,) = run.run(None, {"x": nchw})
        np.testing.assert_array_equal(got, want)


def _cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_pth_to_onnx_through_the_cli_matches_torch_then_infers(tmp_path, photos):
    io = np.load(TORCH / "tiny_io.npz")
    path = tmp_path / "tiny.onnx"
    r = _cli("nstjax.export", [f"checkpoint={TORCH / 'tiny_zip.pth'}", f"output={path}", "format=onnx"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "opset 17" in r.stdout and "dynamic batch/height/width" in r.stdout
    ort = nstjax.load_stylizer(path)
    assert ort.model["pixel_scale"] == 255.0
    got = ort(io["input"])
    np.testing.assert_allclose(got, io["torch_output"], atol=2e-4)  # as the JAX import: 0.05 of a pixel level
    np.testing.assert_allclose(got, nstjax.load_stylizer(TORCH / "tiny_zip.pth")(io["input"]), atol=ATOL)
    photo, out = photos / "val" / "kodak24_kodim07.jpg", tmp_path / "o.png"
    r = _cli("nstjax.infer", [f"model_path={path}", f"input={photo}", f"output={out}", "size=96"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "onnx" in r.stdout and "onnxruntime:CPUExecutionProvider" in r.stdout
    x = resize(load_image(photo), (96, 96))
    want = to_uint8(np.clip(ort(x), 0, 1)).astype(np.int16)
    got_png = np.asarray(Image.open(out).convert("RGB"), np.int16)
    assert np.abs(got_png - want).max() <= 1 and np.abs(got_png - to_uint8(x)).mean() > 10


def test_bad_onnx_files_are_one_line_through_the_cli(exported, tmp_path, photos):
    data = exported["path"].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.onnx").write_text("meeting notes, not a model\n" * 40)
    photo = photos / "val" / "kodak24_kodim01.jpg"
    runs = {name: _cli("nstjax.infer", [f"model_path={tmp_path / name}", f"input={photo}",
                                        f"output={tmp_path / 'o.png'}"], tmp_path)
            for name in ("cut.onnx", "notes.onnx")}
    runs["m.npz"] = _cli("nstjax.export", [f"checkpoint={exported['ckpt']}", f"output={tmp_path / 'm.npz'}",
                                           "format=onnx"], tmp_path)
    for name, r in runs.items():
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, (name, r.stderr[-1500:])
        assert lines[0].startswith("nstjax: error:") and name in lines[0] and "Traceback" not in r.stderr, lines
    assert ".onnx" in runs["m.npz"].stderr  # tells what name format=onnx wants
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "m.npz").exists()


def test_onnx_problems_in_process_are_one_line(exported, tmp_path, monkeypatch):
    path, ckpt = exported["path"], exported["ckpt"]
    g = GraphBuilder({})  # a valid ONNX model that nstjax did not write
    g.op("Identity", "image", out="stylized")
    foreign = helper.make_model(g.finish("foreign").graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "foreign.onnx").write_bytes(foreign.SerializeToString())
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name, needle in (("foreign.onnx", "no nstjax header"), ("empty.onnx", "empty.onnx")):
        with pytest.raises(NstjaxError, match=needle) as e:
            nstjax.load_stylizer(tmp_path / name)
        assert "\n" not in str(e.value)
    cases = {
        "params named .onnx": (lambda: export_model(ckpt, tmp_path / "p.onnx"), "format=onnx"),
        "onnx as a source": (lambda: export_model(path, tmp_path / "again.onnx", kind="onnx"), "does not read back"),
    }
    cases["no onnxruntime"] = (lambda: nstjax.load_stylizer(path), "pip install 'nstjax[onnx]'")
    cases["bfloat16 onnx"] = (lambda: nstjax.load_stylizer(path, dtype="bfloat16"), "runs as exported, in float32")
    for name, (call, needle) in cases.items():
        with pytest.raises(NstjaxError) as e, monkeypatch.context() as m:
            if name == "no onnxruntime":
                m.setitem(sys.modules, "onnxruntime", None)  # as if not installed
            call()
        assert needle in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    monkeypatch.setitem(NETWORKS, "johnson", dataclasses.replace(NETWORKS["johnson"], onnx=None))
    with pytest.raises(NstjaxError, match="has no ONNX graph builder"):
        export_model(ckpt, tmp_path / "x.onnx", kind="onnx")
    assert not list(tmp_path.glob("*x.onnx*"))


def _infer(**kw) -> dict:
    base = {"model_path": None, "step": None, "input": None, "output": None, "size": None, "batch": 2,
            "color": "none", "fps": None, "stablehlo": True, "alpha": 1.0, "overwrite": False, "tile": None,
            "overlap": 16, "start": 0.0, "duration": None}
    return run_infer(load(InferConfig, {**base, **kw}))


def test_infer_folders_animations_and_tiles_run_onnx_unchanged(exported, tmp_path, photos):
    src = tmp_path / "in"
    src.mkdir()
    for i, hw in ((1, (60, 44)), (2, (60, 44)), (3, (150, 118))):
        Image.fromarray(to_uint8(_photos(photos, [i], hw)[0])).save(src / f"p{i}.png")
    gif = tmp_path / "clip.gif"
    frames = [Image.open(src / f"p{i}.png") for i in (1, 2, 1)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0)
    outs = {}
    for backend, model in (("onnx", exported["path"]), ("params", exported["ckpt"])):
        d = tmp_path / backend
        r = _infer(model_path=str(model), input=str(src), output=str(d / "folder"))
        assert r["images"] == 3 and r["backend"] == backend
        r = _infer(model_path=str(model), input=str(gif), output=str(d / "clip.gif"))
        assert r["images"] == 3 and r["shapes"] == [[2, 60, 44, 3]]  # the last frame padded into the batch
        r = _infer(model_path=str(model), input=str(src / "p3.png"), output=str(d / "tiled.png"), tile=64)
        assert r["shapes"] == [[2, 64, 64, 3]]
        outs[backend] = d
    for name in ("folder/p1.png", "folder/p2.png", "folder/p3.png", "tiled.png"):
        a, b = (np.asarray(Image.open(outs[k] / name).convert("RGB"), np.int16) for k in ("onnx", "params"))
        assert np.abs(a - b).max() <= 1, name
    with Image.open(outs["onnx"] / "clip.gif") as im:
        assert im.n_frames == 3
