"""Export formats by name (`python -m nstjax.export format=NAME`), each one place.

A format is a function that turns a network and its parameters into header entries and binary
payloads of the artifact (`nstjax.serving.artifact`), plus, optionally, a loader that runs those
payloads; without one, a loaded artifact rebuilds the flax network from its model config.
To add a format: write both functions and `register_format("name", export, load)`.

A format with a file type of its own (`onnx`: a standalone `.onnx` file) instead registers a
suffix, a writer and an opener with `register_file_format`; `load_stylizer` opens files with
that suffix through its opener.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nstjax import trees
from nstjax.errors import NstjaxError
from nstjax.serving.stylizer import NetworkRunner, Stylizer

Payloads = dict[str, bytes]
ExportFn = Callable[[NetworkRunner, Mapping[str, np.ndarray], "ExportOptions"], tuple[dict[str, Any], Payloads]]
LoadFn = Callable[[Mapping[str, np.ndarray], dict[str, Any], Payloads, Path], Stylizer]
WriteFn = Callable[[NetworkRunner, Mapping[str, np.ndarray], dict[str, Any], "ExportOptions", Path], dict[str, Any]]
OpenFn = Callable[[Path], Any]  # -> a Stylizer or an object with its interface


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    platforms: list[str] | None = None  # None: this machine's backend


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    export: ExportFn | None = None  # None: a file format (`write` writes the whole file)
    load: LoadFn | None = None  # None: rebuild the network from the header's model config
    suffix: str | None = None  # a file format's own file name suffix, e.g. ".onnx"
    write: WriteFn | None = None  # (runner, params, header, options, path) -> the header written
    opener: OpenFn | None = None  # path -> a callable with Stylizer's interface


FORMATS: dict[str, ExportFormat] = {}


def register_format(name: str, export: ExportFn, load: LoadFn | None = None) -> None:
    FORMATS[name] = ExportFormat(export, load)


def register_file_format(name: str, suffix: str, write: WriteFn, opener: OpenFn) -> None:
    FORMATS[name] = ExportFormat(suffix=suffix.lower(), write=write, opener=opener)


def file_format_for(path: Path) -> ExportFormat | None:
    """The file format whose suffix `path` has, if any."""
    return next((f for f in FORMATS.values() if f.suffix and path.name.lower().endswith(f.suffix)), None)


def check_output_name(kind: str, out: Path) -> None:
    """A file format's output has its suffix, and no other format's output takes one."""
    want = FORMATS[kind].suffix
    if want and not out.name.lower().endswith(want):
        raise NstjaxError(f"output {str(out)!r}: format={kind} writes a standalone {want} file; name it e.g. "
                          f"mosaic{want}")
    other = file_format_for(out)
    if not want and other is not None:
        name = next(n for n, f in FORMATS.items() if f is other)
        raise NstjaxError(f"output {str(out)!r}: a {other.suffix} file is read back as format={name}; pass "
                          f"format={name}, or name the {kind} artifact e.g. mosaic.nstjax.npz")


# --------------------------------------------------------------------------- params


def _export_params(runner: NetworkRunner, params: Mapping[str, np.ndarray], options: ExportOptions):
    return {}, {}


register_format("params", _export_params)


# --------------------------------------------------------------------------- stablehlo
# `jax.export`'s serialized `Exported` for f(params: dict[str, f32[...]], x: f32[b, m*h, m*w, 3])
# with m the network's size multiple; params are an input, so the weights are stored once.
# `jnp.pad(mode="reflect")` only lowers symbolically when the pad widths are provably valid,
# and the network's own pad-to-a-multiple is not, so the Stylizer pads on the host instead.
MIN_SYMBOLIC_SIDE = 2  # h, w >= 2: reflect pads inside the network need room


def _export_stablehlo(runner: NetworkRunner, params: Mapping[str, np.ndarray], options: ExportOptions):
    import jax
    import jax.numpy as jnp
    from jax import export

    m = runner.size_multiple
    b, h, w = export.symbolic_shape("b, h, w", constraints=[f"h >= {MIN_SYMBOLIC_SIDE}", f"w >= {MIN_SYMBOLIC_SIDE}"])
    x = jax.ShapeDtypeStruct((b, m * h, m * w, 3), jnp.float32)
    pspec = {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in params.items()}
    try:
        exp = export.export(jax.jit(runner.apply), platforms=options.platforms)(pspec, x)
    except Exception as e:
        raise NstjaxError(
            f"jax.export failed for platforms {options.platforms or 'default'}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    info = {
        "input": f"float32[b, {m}*h, {m}*w, 3], h >= {MIN_SYMBOLIC_SIDE}, w >= {MIN_SYMBOLIC_SIDE} "
                 f"(host pads to a multiple of {m})",
        "platforms": list(exp.platforms),
        "calling_convention_version": int(exp.calling_convention_version),
        "size_multiple": m,
        "min_padded_side": m * MIN_SYMBOLIC_SIDE,
    }
    return {"stablehlo": info}, {"stablehlo": bytes(exp.serialize())}


def _load_stablehlo(params: Mapping[str, np.ndarray], meta: dict[str, Any], payloads: Payloads,
                    path: Path) -> Stylizer:
    """Runs the serialized function: no network code is traced, only jax is needed."""
    import jax
    from jax import export

    where = f"model artifact {str(path)!r}"
    if "stablehlo" not in payloads:
        raise NstjaxError(f"{where} says stablehlo but has no __stablehlo__ entry; re-export it")
    info = meta.get("stablehlo", {})
    have = jax.default_backend()
    plats = [str(p) for p in info.get("platforms", [])]
    if plats and have not in plats:
        raise NstjaxError(
            f"{where} was exported for {', '.join(plats)} but this machine runs {have}; re-export with "
            f"platforms=[{','.join([*plats, have])}] or pass stablehlo=false")
    try:
        exp = export.deserialize(bytearray(payloads["stablehlo"]))
        (pspec, _), _ = jax.tree.unflatten(exp.in_tree, exp.in_avals)
    except Exception as e:
        raise NstjaxError(f"{where}: cannot deserialize the stablehlo function ({type(e).__name__}); "
                          "re-export it with this jax version or pass stablehlo=false") from None
    problems = trees.mismatches(dict(pspec), params, have_name=where, want_name="its stablehlo function",
                                check_dtype=True)
    if problems:
        raise NstjaxError(f"{where}: params do not match its stablehlo function: {trees.summarise(problems)}; "
                          "the file is corrupt or was written by another nstjax version")
    m = int(info.get("size_multiple", 4))  # artifacts before size_multiple was recorded: Johnson's 4
    return Stylizer(exp.call, params, meta=meta, backend="stablehlo", pad_multiple=m, fold_params=True,
                    min_padded_side=int(info.get("min_padded_side", 2 * m)))


register_format("stablehlo", _export_stablehlo, _load_stablehlo)


# --------------------------------------------------------------------------- onnx
# A standalone .onnx file built from the network's ONNX builder (nstjax.networks), run by
# ONNX Runtime; `nstjax.serving.onnx_model` has both halves.


def _write_onnx(runner: NetworkRunner, params: Mapping[str, np.ndarray], meta: dict[str, Any],
                options: ExportOptions, path: Path) -> dict[str, Any]:
    from nstjax.serving.onnx_model import write_onnx

    return write_onnx(runner, params, meta, path)


def _open_onnx(path: Path) -> Any:
    from nstjax.serving.onnx_model import open_onnx

    return open_onnx(path)


register_file_format("onnx", ".onnx", _write_onnx, _open_onnx)
