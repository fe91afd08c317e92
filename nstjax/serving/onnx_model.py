"""`format=onnx`: a standalone `.onnx` file, and running one with ONNX Runtime.

The graph comes from the network's ONNX builder (`NetworkSpec.onnx`); nstjax's header (model
config, source, versions) is JSON under the key `nstjax` of the model's `metadata_props`, so
`load_stylizer("m.onnx")` knows what it runs. Writing needs the `onnx` package, running needs
`onnxruntime` (`pip install 'nstjax[onnx]'`); neither needs jax or flax at run time.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import AtomicPath
from nstjax.errors import NstjaxError
from nstjax.serving.artifact import ARTIFACT_FORMAT

META_KEY = "nstjax"
SUFFIX = ".onnx"
INSTALL = "pip install 'nstjax[onnx]'"
HINT = "export one with `python -m nstjax.export checkpoint=... output=NAME.onnx format=onnx`"


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    line = " ".join(text[0].split()) if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def write_onnx(runner: Any, params: Mapping[str, np.ndarray], meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """Build the network's graph, check it, and write it atomically with `meta` embedded;
    returns the header written (with its `onnx` entry)."""
    from nstjax.networks import NETWORKS

    from nstjax import __version__

    name = runner.config.name
    builder = NETWORKS[name].onnx
    if builder is None:
        raise NstjaxError(f"format=onnx: network {name!r} has no ONNX graph builder (register_network(..., "
                          "onnx=...)); export format=params or stablehlo instead")
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise NstjaxError(f"format=onnx needs the onnx package: {INSTALL}") from None
    built = builder(runner.config, {n: np.asarray(v, np.float32) for n, v in params.items()})
    info = {"opset": built.opset, "input": "image: float32[batch, height, width, 3], NHWC RGB in [0, 1]",
            "output": "stylized: float32[batch, height, width, 3], raw (not clipped)",
            "min_side": built.min_side, "dtype": "float32", "onnx": onnx.__version__, "nstjax": __version__}
    meta = {**meta, "onnx": info}
    opset = [helper.make_opsetid("", built.opset)]
    model = helper.make_model(built.graph, opset_imports=opset, producer_name="nstjax",
                              producer_version=__version__,
                              doc_string=f"nstjax {name} style transfer network; header in metadata_props[{META_KEY!r}]")
    model.ir_version = helper.find_min_ir_version_for(opset)  # the oldest IR that has this opset: older runtimes read it
    helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    onnx.checker.check_model(model, full_check=True)  # a builder bug fails here, not in a user's runtime
    target = AtomicPath(out, fsync=True)
    with target as tmp:
        tmp.write_bytes(model.SerializeToString())
    return meta


class OnnxStylizer:
    """An exported `.onnx` model run by ONNX Runtime, with `Stylizer`'s interface: `stylizer(images)`
    maps (B, H, W, 3) or (H, W, 3) float32 in [0, 1] to the raw output of the same shape.

    ONNX Runtime plans each input shape on its first run; there is nothing to compile ahead, so
    `compile` only checks the shape and records it (`compile_seconds` holds that check's time).
    """

    def __init__(self, session: Any, *, meta: dict[str, Any], path: Path) -> None:
        self._session = session
        self.meta = meta
        self.path = path
        self.backend = "onnx"
        self.min_side = int(meta["onnx"]["min_side"])
        self.compile_seconds: dict[tuple[int, ...], float] = {}
        self.device = f"onnxruntime:{session.get_providers()[0]}"

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.meta.get("model", {}))

    def device_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(s) for s in shape)  # the graph pads and crops itself

    def is_compiled(self, shape: tuple[int, ...]) -> bool:
        return self.device_shape(shape) in self.compile_seconds

    def compile(self, shape: tuple[int, ...]) -> None:
        key = self.device_shape(shape)
        if key not in self.compile_seconds:
            t0 = time.perf_counter()
            if min(key[1:3]) < self.min_side:
                raise NstjaxError(
                    f"image {key[1]}x{key[2]} is too small for the onnx model {str(self.path)!r} (both sides "
                    f"must be >= {self.min_side} px); use a larger size=")
            self.compile_seconds[key] = time.perf_counter() - t0

    def __call__(self, images: Any) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] < 1 or x.shape[2] < 1:
            raise NstjaxError(f"expected images of shape (B, H, W, 3) or (H, W, 3), got {x.shape}")
        self.compile(x.shape)
        (y,) = self._session.run(None, {"image": x})
        return y[0] if single else y


def open_onnx(path: Path) -> OnnxStylizer:
    """A `.onnx` file written by `nstjax.export format=onnx` -> OnnxStylizer; one line otherwise."""
    where = f"onnx model {str(path)!r}"
    if path.is_dir():
        raise NstjaxError(f"{where} is a directory, not an exported file; {HINT}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise NstjaxError(f"{where}: running ONNX models needs onnxruntime: {INSTALL}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings would go to stderr per session
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # InvalidProtobuf, Fail, ... for truncated or foreign bytes
        raise NstjaxError(f"{where} is not a readable ONNX model ({type(e).__name__}: {_first_line(e)}); "
                          f"{HINT}") from None
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise NstjaxError(f"{where} has no nstjax header in its metadata: not written by nstjax.export; {HINT}")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise NstjaxError(f"{where} has a corrupt nstjax header ({e}); {HINT}") from None
    ok = (isinstance(meta, dict) and meta.get("format") == ARTIFACT_FORMAT and meta.get("kind") == "onnx"
          and isinstance(meta.get("model"), Mapping) and isinstance(meta.get("onnx"), Mapping)
          and "min_side" in meta["onnx"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not ok or [i.name for i in inputs] != ["image"] or len(inputs[0].shape) != 4 or len(outputs) != 1:
        raise NstjaxError(f"{where}: its nstjax header or inputs are not those of an nstjax onnx export; {HINT}")
    return OnnxStylizer(session, meta=meta, path=path)
