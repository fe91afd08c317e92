"""The inference artifact: one uncompressed `.npz` (numpy zip, loads with `allow_pickle=False`).

* `__nstjax__`: uint8 bytes of a UTF-8 JSON header: `format` ("nstjax-inference"), `version`,
  `kind` (an export format of `nstjax.serving.exporters.FORMATS`), `model` (the network's own
  config, verbatim: `build_network` rebuilds it), `source` (checkpoint path and step),
  `config` (the resolved training config), library versions and the format's own entries.
* `params/<path>`: one array per parameter (float32, or float16 with `params_dtype`), named by its path in the module tree
  (`conv1/conv/kernel`, `res/0/in1/scale`, ...), i.e. `nnx.to_pure_dict` flattened.
* `__<name>__`: extra binary payloads of the format (e.g. `__stablehlo__`).

Written to a temp file beside the target and renamed, so a reader never sees half an artifact.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import AtomicPath
from nstjax.errors import NstjaxError

ARTIFACT_FORMAT = "nstjax-inference"
ARTIFACT_VERSION = 1
META_KEY = "__nstjax__"
PARAM_PREFIX = "params/"
HINT = "export one with `python -m nstjax.export checkpoint=DIR output=FILE`"


def payload_key(name: str) -> str:
    return f"__{name}__"


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, indent=1).encode("utf-8"), dtype=np.uint8)


def write_artifact(path: str | os.PathLike, params: Mapping[str, Any], meta: Mapping[str, Any],
                   payloads: Mapping[str, bytes] | None = None, params_dtype: str = "float32") -> Path:
    """Write params (stored as `params_dtype`) + JSON header (+ binary payloads by name)
    atomically; returns the path."""
    arrays: dict[str, np.ndarray] = {META_KEY: _json_bytes({**meta, "params_dtype": params_dtype})}
    for name, value in params.items():
        value = np.asarray(value)
        arrays[PARAM_PREFIX + name] = value.astype(params_dtype) if np.issubdtype(value.dtype, np.floating) else value
    for name, blob in (payloads or {}).items():
        arrays[payload_key(name)] = np.frombuffer(bytes(blob), dtype=np.uint8)
    target = AtomicPath(path, fsync=True)
    with target as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # a file object: numpy does not append ".npz" to the name
    return target.path


def read_artifact(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, bytes]]:
    """Read (params, header, payloads by name); any problem -> one NstjaxError line."""
    p = Path(path)
    if not p.exists():
        raise NstjaxError(f"model artifact {str(p)!r} does not exist; {HINT}")
    if p.is_dir():
        raise NstjaxError(f"model artifact {str(p)!r} is a directory, not an exported file")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, truncated members, pickled objects, ...
        raise NstjaxError(
            f"model artifact {str(p)!r} is not a readable nstjax artifact ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'corrupt'}); {HINT}"
        ) from None
    if META_KEY not in data:
        raise NstjaxError(f"model artifact {str(p)!r} has no {META_KEY} header: not an nstjax artifact; {HINT}")
    try:
        meta = json.loads(data.pop(META_KEY).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise NstjaxError(f"model artifact {str(p)!r} has a corrupt header ({e}); {HINT}") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise NstjaxError(f"model artifact {str(p)!r}: header is not format {ARTIFACT_FORMAT!r}; {HINT}")
    if meta.get("version") != ARTIFACT_VERSION:
        raise NstjaxError(
            f"model artifact {str(p)!r} has version {meta.get('version')!r}; this nstjax reads "
            f"version {ARTIFACT_VERSION}; re-export it with this version"
        )
    if not isinstance(meta.get("model"), Mapping) or "name" not in meta["model"]:
        raise NstjaxError(f"model artifact {str(p)!r} has no model config in its header; {HINT}")
    # float16-stored params come back as the float32 the network computes with.
    params = {k[len(PARAM_PREFIX):]: v.astype(np.float32) if v.dtype == np.float16 else v
              for k, v in data.items() if k.startswith(PARAM_PREFIX)}
    payloads = {k[2:-2]: v.tobytes() for k, v in data.items() if k.startswith("__") and k.endswith("__")}
    return params, meta, payloads
