"""Open a trained network from an artifact file or a training checkpoint directory."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nstjax import trees
from nstjax.config import INFER_DTYPES
from nstjax.errors import NstjaxError
from nstjax.serving.artifact import read_artifact
from nstjax.serving.stylizer import Stylizer, runner_for

CHECKPOINT_HINT = "was it written by a different nstjax version?"
TORCH_SUFFIXES = (".pth", ".pt")
ARTIFACT_HINT = "the file is corrupt or was written by another nstjax version"
#: `dtype=` of load_stylizer / nstjax.infer: the dtype the network computes in.
COMPUTE_DTYPES = INFER_DTYPES


def compute_dtype(dtype: str | None, model: Mapping[str, Any]) -> str:
    """The compute dtype a loaded network runs in. `None`/"model": as trained (its model
    config's); "auto": bfloat16 on a GPU or TPU (twice the math rate and half the memory
    traffic of float32), as trained on CPU (where bfloat16 convolutions are emulated);
    otherwise the dtype named. Parameters stay as stored: only the compute changes."""
    own = str(model.get("dtype", "float32"))
    if dtype in (None, "model"):
        return own
    if dtype not in COMPUTE_DTYPES:
        raise NstjaxError(f"dtype: expected one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        import jax

        return "bfloat16" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else own
    return dtype


def _computing_in(model: Mapping[str, Any], dtype: str | None) -> dict[str, Any]:
    """The model config with its compute dtype set to what `dtype` asks for."""
    import dataclasses

    from nstjax.networks import NETWORKS

    want, own = compute_dtype(dtype, model), str(model.get("dtype", "float32"))
    if want == own:
        return dict(model)
    spec = NETWORKS.get(str(model.get("name")))
    if spec is not None and "dtype" not in {f.name for f in dataclasses.fields(spec.config)}:
        if dtype == "auto":  # a network without a compute-dtype setting runs as it is
            return dict(model)
        raise NstjaxError(f"dtype={dtype}: model.name={model.get('name')} has no compute dtype setting; "
                          "use dtype=auto or model")
    return {**model, "dtype": want}


def chosen_style(params: Mapping[str, Any], model: Mapping[str, Any], source: dict[str, Any], choice: Any,
                 where: str, keep_all: bool = False) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A multi-style network fixed to `model_style=choice` (a name, an index or a mix), or an
    any-style network to a style image (a path or a mix {path: weight}), as an ordinary
    single-style network; the choice is recorded in the source info. `keep_all`: such a
    network with no choice stays whole (a params artifact of every style)."""
    from nstjax.networks import fix_style, needs_style

    if choice is None and keep_all and needs_style(model):
        return dict(params), dict(model), source
    model, params, record = fix_style(model, params, choice, where, load_style=read_style_image)
    return params, model, source if record is None else {**source, "model_style": record}


def read_style_image(path: str) -> np.ndarray:
    """A `model_style=` style image: a path, or an asset name under $NSTJAX_ASSETS."""
    from nstjax import assets
    from nstjax.image import load_image

    return load_image(assets.resolve(path, what="model_style"), what="model_style")


def load_source(path: str | os.PathLike, step: int | str | None, what: str, model_style: Any = None,
                keep_all: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """(flat params, model config, source info incl. the training config) from a checkpoint
    directory (or a run directory holding `checkpoints/`), an artifact file or a .pth file;
    a multi-style network fixed to `model_style` (`chosen_style`)."""
    params, model, source = _load_source(path, step, what)
    return chosen_style(params, model, source, model_style, f"{what} {str(path)!r}", keep_all)


def _load_source(path: str | os.PathLike, step: int | str | None,
                 what: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise NstjaxError(
            f"{what} {str(path)!r} does not exist: expected a training checkpoint directory "
            "(runs/<run_name>/checkpoints) or an exported .npz artifact")
    if p.is_dir():
        from nstjax.serving.checkpoints import load_params_for_inference

        if (p / "checkpoints").is_dir() and not any(c.name.isdigit() for c in p.iterdir()):
            p = p / "checkpoints"  # a run directory runs/<run_name>
        params, config, got = load_params_for_inference(p, step)
        model = config.get("model") if isinstance(config, Mapping) else None
        if not isinstance(model, Mapping) or "name" not in model:
            raise NstjaxError(f"checkpoint {p} has no model config (expected model.name in its config)")
        source = {"checkpoint": str(p.absolute()), "step": got, "config": config}
        return trees.flatten(params), dict(model), source
    if step is not None:
        raise NstjaxError(f"step={step} only applies to checkpoint directories; {str(p)!r} is a file")
    if _file_format(p) is not None:
        raise NstjaxError(f"{what} {str(p)!r} is an exported {p.suffix} model, which nstjax does not read back "
                          "into weights; export from the checkpoint or .npz artifact it was made from")
    if p.suffix.lower() in TORCH_SUFFIXES:  # pytorch/examples' fast_neural_style weights
        from nstjax.serving.torch_import import johnson_from_state_dict, read_state_dict

        params, model = johnson_from_state_dict(read_state_dict(p))
        return params, model, {"torch_state_dict": str(p.absolute()), "config": None}
    params, meta, _ = read_artifact(p)
    src = dict(meta.get("source") or {})
    return params, dict(meta["model"]), {**src, "artifact": str(p.absolute()), "config": meta.get("config")}


def _file_format(p: Path) -> Any:
    from nstjax.serving.formats import file_format_for

    return file_format_for(p)


def load_artifact(path: str | os.PathLike, *, use_compiled_format: bool = True,
                  dtype: str | None = None, model_style: Any = None) -> Stylizer:
    """An artifact file -> Stylizer. Its format's own loader runs it (e.g. the serialized
    StableHLO function) unless `use_compiled_format=False` or a compute `dtype` other than the
    one it was exported with is asked for: then the flax network is rebuilt from its params.
    A multi-style artifact is fixed to `model_style` first (`chosen_style`)."""
    from nstjax.serving.formats import FORMATS

    p = Path(str(path)).expanduser()
    params, meta, payloads = read_artifact(p)
    kind = meta.get("kind")
    if kind not in FORMATS:
        raise NstjaxError(f"model artifact {str(p)!r}: unknown kind {kind!r}; known: {', '.join(FORMATS)}")
    fmt = FORMATS[kind]
    where = f"model artifact {str(p)!r}"
    params, fixed, src = chosen_style(params, meta["model"], dict(meta.get("source") or {}), model_style, where)
    styled = fixed != meta["model"]
    meta = {**meta, "model": fixed, "source": src}
    model = _computing_in(fixed, dtype)
    if (fmt.load is not None and use_compiled_format and not styled
            and model["dtype"] == meta["model"].get("dtype", "float32")):
        return fmt.load(params, meta, payloads, p)
    runner = runner_for(model)
    runner.check(params, where, ARTIFACT_HINT)
    return Stylizer(runner.serve, params, meta={**meta, "model": model}, backend="params",
                    fold_params=True, cache=runner.executables)


def load_stylizer(path: str | os.PathLike, *, step: int | str | None = None, use_compiled_format: bool = True,
                  dtype: str | None = None, model_style: Any = None) -> Stylizer:
    """Any artifact, training checkpoint directory, .pth or exported .onnx -> a callable `Stylizer`
    (for .onnx an `OnnxStylizer`, with the same interface, run by ONNX Runtime).

        stylize = nstjax.load_stylizer("mosaic.nstjax.npz")
        out = stylize(photo)          # (H, W, 3) or (B, H, W, 3) float32 in [0, 1]
        fast = nstjax.load_stylizer("mosaic.nstjax.npz", dtype="auto")   # bfloat16 on a GPU

    `dtype` is the compute dtype (`compute_dtype`): None as trained, "auto", or one named.
    A network of several styles (trained with `style.multi=true`) needs `model_style`: a
    style's name or index, or a mix such as {"candy": 0.7, "mosaic": 0.3}.
    """
    p = Path(str(path)).expanduser()
    if p.is_dir():
        params, model_cfg, src = load_source(p, step, "model_path", model_style)
        model_cfg = _computing_in(model_cfg, dtype)
        where = f"checkpoint {p}"
        runner = runner_for(model_cfg)
        runner.check(params, where, CHECKPOINT_HINT)
        config = src.pop("config", None)
        meta = {"kind": "checkpoint", "model": model_cfg, "source": src, "config": config}
        return Stylizer(runner.serve, {n: params[n] for n in runner.names}, meta=meta, backend="params",
                        fold_params=True, cache=runner.executables)
    if not p.exists():
        raise NstjaxError(
            f"model_path {str(path)!r} does not exist: expected an exported artifact "
            "(.npz or .onnx from python -m nstjax.export) or a checkpoint directory (runs/<run_name>/checkpoints)")
    if step is not None:
        raise NstjaxError(f"step={step} only applies to checkpoint directories; {str(p)!r} is a file")
    fmt = _file_format(p)
    if fmt is not None:  # a format's own file type, e.g. .onnx: its opener runs it, as exported
        if dtype not in (None, "model", "auto") and compute_dtype(dtype, {}) != "float32":
            raise NstjaxError(f"dtype={dtype}: {str(p)!r} runs as exported, in float32; dtype= applies to "
                              ".npz artifacts, checkpoints and .pth files (use dtype=auto or float32 here)")
        if model_style is not None:
            raise NstjaxError(f"model_style={model_style!r}: {str(p)!r} draws the one style it was exported "
                              "with; export the style wanted from the multi-style checkpoint or .npz")
        return fmt.opener(p)
    if p.suffix.lower() in TORCH_SUFFIXES:
        params, model_cfg, src = load_source(p, None, "model_path", model_style)
        model_cfg = _computing_in(model_cfg, dtype)
        runner = runner_for(model_cfg)
        runner.check(params, f"torch state dict {str(p)!r}", "is it pytorch/examples' TransformerNet?")
        return Stylizer(runner.serve, {n: params[n] for n in runner.names},
                        meta={"kind": "torch", "model": model_cfg, "source": src}, backend="params",
                        fold_params=True, cache=runner.executables)
    return load_artifact(p, use_compiled_format=use_compiled_format, dtype=dtype, model_style=model_style)
