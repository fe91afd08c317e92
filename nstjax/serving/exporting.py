"""Export a trained network (checkpoint, artifact or .pth) as an artifact in any registered format,
or as a file of a format's own type (`format=onnx`)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.errors import NstjaxError
from nstjax.serving.artifact import ARTIFACT_FORMAT, ARTIFACT_VERSION, write_artifact
from nstjax.serving.formats import FORMATS, ExportOptions, check_output_name
from nstjax.serving.loading import CHECKPOINT_HINT, load_source
from nstjax.serving.stylizer import runner_for


def export_model(source: str | os.PathLike, output: str | os.PathLike, *, step: int | str | None = None,
                 kind: str = "params", platforms: list[str] | None = None,
                 params_dtype: str = "float32", model_style: Any = None) -> dict[str, Any]:
    """Checkpoint dir (or artifact, or .pth) -> artifact file of format `kind`, or the file of a
    file format (e.g. `.onnx`). Returns the header written. A multi-style network exports whole
    as params, or fixed to `model_style` (a name, an index or a mix) in any format."""
    if kind not in FORMATS:
        raise NstjaxError(f"format: expected one of {', '.join(FORMATS)}, got {kind!r}")
    out = Path(str(output))
    if out.is_dir():
        raise NstjaxError(f"output {str(out)!r} is a directory; give a file name such as mosaic.nstjax.npz")
    check_output_name(kind, out)
    import flax  # after the checks: a wrong name fails before jax starts
    import jax

    params, model_cfg, src = load_source(source, step, "checkpoint", model_style, keep_all=kind == "params")
    runner = runner_for(model_cfg)
    runner.check(params, f"checkpoint {source}", CHECKPOINT_HINT)
    params = {n: np.asarray(params[n]) for n in runner.names}
    config = src.pop("config", None)
    meta: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "kind": kind,
        "model": model_cfg,  # verbatim: the network's own config
        "source": src,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "num_params": int(sum(v.size for v in params.values())),
        "config": config,
    }
    fmt, options = FORMATS[kind], ExportOptions(platforms=platforms)
    if fmt.write is not None:  # a file type of its own: the format writes the whole file
        if params_dtype != "float32":
            raise NstjaxError(f"params_dtype={params_dtype} applies to .npz artifacts, not format={kind}")
        return fmt.write(runner, params, meta, options, out)
    info, payloads = fmt.export(runner, params, options)
    meta.update(info)
    write_artifact(out, params, meta, payloads, params_dtype=params_dtype)
    return meta
