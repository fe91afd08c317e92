"""Export a trained network (checkpoint or artifact) as an artifact in any registered format."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.errors import NstjaxError
from nstjax.serving.artifact import ARTIFACT_FORMAT, ARTIFACT_VERSION, write_artifact
from nstjax.serving.formats import FORMATS, ExportOptions
from nstjax.serving.loading import CHECKPOINT_HINT, load_source
from nstjax.serving.stylizer import runner_for


def export_model(source: str | os.PathLike, output: str | os.PathLike, *, step: int | str | None = None,
                 kind: str = "params", platforms: list[str] | None = None) -> dict[str, Any]:
    """Checkpoint dir (or artifact) -> artifact file of format `kind`. Returns the header written."""
    import flax
    import jax

    if kind not in FORMATS:
        raise NstjaxError(f"format: expected one of {', '.join(FORMATS)}, got {kind!r}")
    out = Path(str(output))
    if out.is_dir():
        raise NstjaxError(f"output {str(out)!r} is a directory; give a file name such as mosaic.nstjax.npz")
    params, model_cfg, src = load_source(source, step, "checkpoint")
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
    info, payloads = FORMATS[kind].export(runner, params, ExportOptions(platforms=platforms))
    meta.update(info)
    write_artifact(out, params, meta, payloads)
    return meta
