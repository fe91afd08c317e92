"""Export a trained feed-forward network as a self-contained inference artifact.

    python -m nstjax.export checkpoint=runs/mosaic/checkpoints output=mosaic.nstjax.npz
    python -m nstjax.export checkpoint=runs/mosaic/checkpoints step=20000 output=m.npz format=stablehlo
    python -m nstjax.export checkpoint=mosaic.nstjax.npz output=m.hlo.npz format=stablehlo platforms=[cpu,cuda]

Artifact: one uncompressed ``.npz`` (numpy zip, loadable with ``allow_pickle=False``) holding

* ``__nstjax__``: uint8 bytes of a UTF-8 JSON header: ``format`` ("nstjax-inference"),
  ``version``, ``kind`` ("params" or "stablehlo"), ``model`` (name, width, num_residual,
  dtype: enough to rebuild the network), ``source`` (checkpoint path and step), ``config`` (the
  resolved training config), library versions and, for stablehlo, the exported signature.
* ``params/<path>``: one float32 array per parameter, named by its path in the module tree
  (``conv1/conv/kernel``, ``res/0/in1/scale``, ...), i.e. ``nnx.to_pure_dict`` flattened.
* ``__stablehlo__`` (``format=stablehlo`` only): uint8 bytes of ``jax.export``'s serialized
  ``Exported`` for ``f(params: dict[str, f32[...]], x: f32[b, 4*h, 4*w, 3])``. The params are
  an input rather than baked-in constants, so the weights are stored once and stay inspectable.

Shape polymorphism: batch, height and width are symbolic, but ``jnp.pad(mode="reflect")`` only
lowers symbolically when the pad widths are provably valid, and the network's own
pad-to-a-multiple-of-4 (``(-h) % 4``) is not, so the exported function takes inputs whose
sides are multiples of 4 (at least 8, constraint ``h >= 2``) and :func:`load_exported` does
that reflect pad and the crop on the host in numpy, exactly as ``TransformerNet`` does on the
device. Net effect: any image with both sides >= 5 px works, one compile per padded shape.

The file is written to a temporary name beside the target and renamed, so a reader never sees a
half-written artifact.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from nstjax.atomic import publish
from nstjax.errors import NstjaxError, cli_errors

__all__ = [
    "ARTIFACT_FORMAT",
    "Stylizer",
    "export_model",
    "load_exported",
    "load_stylizer",
    "read_artifact",
    "write_artifact",
]

ARTIFACT_FORMAT = "nstjax-inference"
ARTIFACT_VERSION = 1
META_KEY = "__nstjax__"
HLO_KEY = "__stablehlo__"
PARAM_PREFIX = "params/"
KINDS = ("params", "stablehlo")
#: The exported function needs padded sides >= this (two stride-2 convs, then 3x3 reflect pads).
HLO_MIN_PADDED = 8
_MODEL_KEYS = ("name", "width", "num_residual", "dtype")


# --------------------------------------------------------------------------------------
# Parameters <-> flat name -> array dicts


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat_names(tree: Any) -> tuple[list[str], list[Any], Any]:
    """Leaves of a params tree keyed 'a/b/0/kernel' (an nnx.Variable's own 'value' dropped)."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names, values = [], []
    for path, leaf in leaves:
        parts = [_key_str(k) for k in path]
        if parts and parts[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
            parts = parts[:-1]
        names.append("/".join(parts))
        values.append(leaf)
    return names, values, treedef


def flatten_params(tree: Any) -> dict[str, Any]:
    """nnx params (State, or the pure dict from checkpoints) -> {'conv1/conv/kernel': array}."""
    names, values, _ = _flat_names(tree)
    return dict(zip(names, values))


def _model_cfg(model: Any, where: str) -> dict[str, Any]:
    if not isinstance(model, Mapping) or "name" not in model:
        raise NstjaxError(f"{where} has no model config (expected name, width, num_residual, dtype)")
    return {k: model[k] for k in _MODEL_KEYS if k in model}


def _check_params(flat: Mapping[str, Any], specs: Mapping[str, Any], what: str, hint: str) -> None:
    """One NstjaxError line naming the first few names/shapes/dtypes that differ."""
    problems = [f"'{n}' is missing" for n in specs if n not in flat]
    problems += [f"unexpected '{n}'" for n in flat if n not in specs]
    for n, want in specs.items():
        if n in flat:
            have = flat[n]
            if tuple(have.shape) != tuple(want.shape) or np.dtype(have.dtype) != np.dtype(want.dtype):
                problems.append(
                    f"'{n}' is {np.dtype(have.dtype).name}{list(have.shape)}, "
                    f"expected {np.dtype(want.dtype).name}{list(want.shape)}"
                )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise NstjaxError(f"{what}: {'; '.join(problems[:3])}{more}; {hint}")


class _Net:
    """The graph of a network built abstractly (no init compute) from its model config.

    Shared per model config (see :func:`_net`), together with its compiled executables, so
    loading the same network twice in one process (checkpoint, then artifact) compiles once.
    """

    def __init__(self, model_cfg: Mapping[str, Any]) -> None:
        from flax import nnx

        from nstjax.networks import build_network

        self.model_cfg = dict(model_cfg)
        abstract = nnx.eval_shape(lambda: build_network(self.model_cfg, rngs=nnx.Rngs(0)))
        self.graphdef, state = nnx.split(abstract, nnx.Param)
        self.names, specs, self.treedef = _flat_names(state)
        self.specs = dict(zip(self.names, specs))
        self.executables: dict[tuple[int, ...], Any] = {}

    def check(self, flat: Mapping[str, Any], where: str, hint: str) -> None:
        _check_params(flat, self.specs, f"{where}: params do not match model {self.model_cfg}", hint)

    def apply(self, flat: Mapping[str, Any], x: Any) -> Any:
        """Pure function of (flat params, NHWC batch): the network's forward pass."""
        import jax
        from flax import nnx

        state = jax.tree.unflatten(self.treedef, [flat[n] for n in self.names])
        return nnx.merge(self.graphdef, state)(x)


_NETS: dict[str, _Net] = {}


def _net(model_cfg: Any, where: str) -> _Net:
    cfg = _model_cfg(model_cfg, where)
    key = json.dumps(cfg, sort_keys=True)
    if key not in _NETS:
        _NETS[key] = _Net(cfg)
    return _NETS[key]


# --------------------------------------------------------------------------------------
# Artifact I/O


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, indent=1).encode("utf-8"), dtype=np.uint8)


def write_artifact(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    meta: Mapping[str, Any],
    stablehlo: bytes | bytearray | None = None,
) -> Path:
    """Write params + JSON header (+ serialized jax.export) atomically; returns the path."""
    out = Path(path)
    arrays: dict[str, np.ndarray] = {META_KEY: _json_bytes(dict(meta))}
    for name, value in params.items():
        arrays[PARAM_PREFIX + name] = np.asarray(value)
    if stablehlo is not None:
        arrays[HLO_KEY] = np.frombuffer(bytes(stablehlo), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # a file object: numpy does not append ".npz" to the name
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_artifact(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any], bytes | None]:
    """Read (params, header, serialized stablehlo or None); any problem -> one NstjaxError."""
    p = Path(path)
    hint = "export one with `python -m nstjax.export checkpoint=DIR output=FILE`"
    if not p.exists():
        raise NstjaxError(f"model artifact {str(p)!r} does not exist; {hint}")
    if p.is_dir():
        raise NstjaxError(f"model artifact {str(p)!r} is a directory, not an exported file")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, truncated members, pickled objects, ...
        raise NstjaxError(
            f"model artifact {str(p)!r} is not a readable nstjax artifact ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'corrupt'}); {hint}"
        ) from None
    if META_KEY not in data:
        raise NstjaxError(f"model artifact {str(p)!r} has no {META_KEY} header: not an nstjax artifact; {hint}")
    try:
        meta = json.loads(data.pop(META_KEY).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise NstjaxError(f"model artifact {str(p)!r} has a corrupt header ({e}); {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise NstjaxError(f"model artifact {str(p)!r}: header is not format {ARTIFACT_FORMAT!r}; {hint}")
    if meta.get("version") != ARTIFACT_VERSION:
        raise NstjaxError(
            f"model artifact {str(p)!r} has version {meta.get('version')!r}; this nstjax reads "
            f"version {ARTIFACT_VERSION}; re-export it with this version"
        )
    if meta.get("kind") not in KINDS:
        raise NstjaxError(f"model artifact {str(p)!r}: unknown kind {meta.get('kind')!r}")
    hlo = data.pop(HLO_KEY, None)
    if meta["kind"] == "stablehlo" and hlo is None:
        raise NstjaxError(f"model artifact {str(p)!r} says stablehlo but has no {HLO_KEY} entry; {hint}")
    params = {k[len(PARAM_PREFIX):]: v for k, v in data.items() if k.startswith(PARAM_PREFIX)}
    return params, meta, (hlo.tobytes() if hlo is not None else None)


def _load_source(
    path: str | os.PathLike, step: int | None, what: str
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """(flat params, model config, source info) from a checkpoint directory or an artifact."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise NstjaxError(
            f"{what} {str(path)!r} does not exist: expected a training checkpoint directory "
            "(runs/<run_name>/checkpoints) or an exported .npz artifact"
        )
    if p.is_dir():
        from nstjax.checkpoint import load_params_for_inference

        if (p / "checkpoints").is_dir() and not any(c.name.isdigit() for c in p.iterdir()):
            p = p / "checkpoints"  # a run directory runs/<run_name>

        params, config, got = load_params_for_inference(p, step)
        model = config.get("model") if isinstance(config, Mapping) else None
        source = {"checkpoint": str(p.absolute()), "step": got, "config": config}
        return flatten_params(params), _model_cfg(model, f"checkpoint {p}"), source
    if step is not None:
        raise NstjaxError(f"step={step} only applies to checkpoint directories; {str(p)!r} is a file")
    params, meta, _ = read_artifact(p)
    src = dict(meta.get("source") or {})
    return params, _model_cfg(meta.get("model"), f"model artifact {p}"), {
        **src, "artifact": str(p.absolute()), "config": meta.get("config")}


# --------------------------------------------------------------------------------------
# Export


def _export_stablehlo(
    net: _Net, params: Mapping[str, np.ndarray], platforms: list[str] | None
) -> tuple[bytes, dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    from jax import export

    b, h, w = export.symbolic_shape("b, h, w", constraints=["h >= 2", "w >= 2"])
    x = jax.ShapeDtypeStruct((b, 4 * h, 4 * w, 3), jnp.float32)
    pspec = {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in params.items()}
    try:
        exp = export.export(jax.jit(net.apply), platforms=platforms)(pspec, x)
    except Exception as e:
        raise NstjaxError(
            f"jax.export failed for platforms {platforms or 'default'}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    info = {
        "input": "float32[b, 4*h, 4*w, 3], h >= 2, w >= 2 (host pads to a multiple of 4)",
        "platforms": list(exp.platforms),
        "calling_convention_version": int(exp.calling_convention_version),
        "min_padded_side": HLO_MIN_PADDED,
    }
    return bytes(exp.serialize()), info


def export_model(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    step: int | None = None,
    kind: str = "params",
    platforms: list[str] | None = None,
) -> dict[str, Any]:
    """Checkpoint dir (or artifact) -> artifact file. Returns the header written."""
    import flax
    import jax

    if kind not in KINDS:
        raise NstjaxError(f"format: expected one of {', '.join(KINDS)}, got {kind!r}")
    out = Path(str(output))
    if out.exists() and out.is_dir():
        raise NstjaxError(f"output {str(out)!r} is a directory; give a file name such as mosaic.nstjax.npz")
    params, model_cfg, src = _load_source(source, step, "checkpoint")
    net = _net(model_cfg, f"checkpoint {source}")
    net.check(params, f"checkpoint {source}", "was it written by a different nstjax version?")
    params = {n: np.asarray(params[n]) for n in net.names}
    config = src.pop("config", None)
    meta: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "kind": kind,
        "model": model_cfg,
        "source": src,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "num_params": int(sum(v.size for v in params.values())),
        "config": config,
    }
    hlo = None
    if kind == "stablehlo":
        hlo, meta["stablehlo"] = _export_stablehlo(net, params, platforms)
    write_artifact(out, params, meta, hlo)
    return meta


# --------------------------------------------------------------------------------------
# Loading for inference


def _pad_multiple(x: np.ndarray, multiple: int = 4) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Reflect-pad H, W to a multiple, split between borders exactly as TransformerNet does."""
    _, h, w, _ = x.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    if ph or pw:
        x = np.pad(x, ((0, 0), (top, ph - top), (left, pw - left), (0, 0)), mode="reflect")
    return x, (top, left, h, w)


class Stylizer:
    """A loaded network: ``stylizer(images)`` maps (B, H, W, 3) or (H, W, 3) float32 in [0, 1]
    to the raw float32 network output of the same shape (not clipped, as the model returns it).

    One XLA executable per input shape, compiled on first use and cached (``compile_seconds``
    records how long each took). Use :meth:`compile` to compile ahead of timing.
    """

    def __init__(self, fn: Callable, params: Mapping[str, Any], *, meta: dict[str, Any],
                 backend: str, host_pad: bool, cache: dict[tuple[int, ...], Any] | None = None) -> None:
        import jax

        self._fn = jax.jit(fn)
        self._params = jax.device_put(dict(params))
        self._param_spec = {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in self._params.items()}
        self._cache: dict[tuple[int, ...], Any] = {} if cache is None else cache
        self.compile_seconds: dict[tuple[int, ...], float] = {}
        self.meta = meta
        self.backend = backend  # "params" (rebuilt flax model) or "stablehlo" (jax.export)
        self.host_pad = host_pad

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.meta.get("model", {}))

    def device_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the executable sees for an input batch shape (after host padding)."""
        b, h, w, c = shape
        if self.host_pad:
            h, w = h + (-h) % 4, w + (-w) % 4
        return (b, h, w, c)

    def is_compiled(self, shape: tuple[int, ...]) -> bool:
        return self.device_shape(tuple(int(s) for s in shape)) in self._cache

    def compile(self, shape: tuple[int, ...]) -> Any:
        import jax

        key = self.device_shape(tuple(int(s) for s in shape))
        exe = self._cache.get(key)
        if exe is None:
            if self.host_pad and min(key[1:3]) < HLO_MIN_PADDED:
                raise NstjaxError(
                    f"image {shape[1]}x{shape[2]} is too small for the stablehlo artifact "
                    f"(both sides must be >= {HLO_MIN_PADDED - 3} px); use a larger size= or a params artifact"
                )
            t0 = time.perf_counter()
            exe = self._fn.lower(self._param_spec, jax.ShapeDtypeStruct(key, np.float32)).compile()
            self.compile_seconds[key] = time.perf_counter() - t0
            self._cache[key] = exe
        return exe

    def __call__(self, images: Any) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] < 1 or x.shape[2] < 1:
            raise NstjaxError(f"expected images of shape (B, H, W, 3) or (H, W, 3), got {x.shape}")
        exe = self.compile(x.shape)
        crop = None
        if self.host_pad:
            x, crop = _pad_multiple(x)
        y = np.asarray(exe(self._params, x))
        if crop is not None:
            top, left, h, w = crop
            y = y[:, top : top + h, left : left + w, :]
        return y[0] if single else y


def _platform_check(meta: dict[str, Any], path: Path) -> None:
    import jax

    have = jax.default_backend()
    plats = [str(p) for p in meta.get("stablehlo", {}).get("platforms", [])]
    if plats and have not in plats:
        raise NstjaxError(
            f"model artifact {str(path)!r} was exported for {', '.join(plats)} but this machine runs "
            f"{have}; re-export with platforms=[{','.join([*plats, have])}] or pass stablehlo=false"
        )


def load_exported(path: str | os.PathLike, *, use_stablehlo: bool = True) -> Stylizer:
    """Load an artifact written by :func:`export_model` as a callable :class:`Stylizer`.

    For ``kind == "stablehlo"`` the serialized function runs (no model code is traced);
    ``use_stablehlo=False`` (or a params artifact) rebuilds the flax network from the header.
    """
    p = Path(str(path)).expanduser()
    params, meta, hlo = read_artifact(p)
    where = f"model artifact {str(p)!r}"
    hint = "the file is corrupt or was written by another nstjax version"
    if hlo is not None and use_stablehlo:
        # Runs without the network's Python code: only jax is needed.
        import jax
        from jax import export

        _platform_check(meta, p)
        try:
            exp = export.deserialize(bytearray(hlo))
            (pspec, _), _ = jax.tree.unflatten(exp.in_tree, exp.in_avals)
        except Exception as e:
            raise NstjaxError(
                f"{where}: cannot deserialize the stablehlo function ({type(e).__name__}); "
                "re-export it with this jax version or pass stablehlo=false"
            ) from None
        _check_params(params, pspec, f"{where}: params do not match its stablehlo function", hint)
        return Stylizer(exp.call, params, meta=meta, backend="stablehlo", host_pad=True)
    net = _net(meta.get("model"), where)
    net.check(params, where, hint)
    return Stylizer(net.apply, params, meta=meta, backend="params", host_pad=False, cache=net.executables)


def load_stylizer(
    path: str | os.PathLike, *, step: int | None = None, use_stablehlo: bool = True
) -> Stylizer:
    """An artifact file or a training checkpoint directory -> :class:`Stylizer`."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        params, model_cfg, src = _load_source(p, step, "model_path")
        where = f"checkpoint {p}"
        net = _net(model_cfg, where)
        net.check(params, where, "was it written by a different nstjax version?")
        src.pop("config", None)
        meta = {"kind": "checkpoint", "model": model_cfg, "source": src}
        return Stylizer(net.apply, {n: params[n] for n in net.names}, meta=meta, backend="params",
                        host_pad=False, cache=net.executables)
    if not p.exists():
        raise NstjaxError(
            f"model_path {str(path)!r} does not exist: expected an exported artifact "
            "(python -m nstjax.export) or a checkpoint directory (runs/<run_name>/checkpoints)"
        )
    if step is not None:
        raise NstjaxError(f"step={step} only applies to checkpoint directories; {str(p)!r} is a file")
    return load_exported(p, use_stablehlo=use_stablehlo)


# --------------------------------------------------------------------------------------
# CLI


def _platforms(v: Any) -> list[str] | None:
    if v is None:
        return None
    items = list(v) if isinstance(v, (list, tuple, ListConfig)) else [v]
    out = [str(s).lower() for s in items]
    bad = [s for s in out if s not in ("cpu", "cuda", "rocm", "tpu")]
    if bad:
        raise NstjaxError(f"platforms: unknown {bad}; choose from cpu, cuda, rocm, tpu")
    return out or None


def run_export(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("checkpoint") in (None, ""):
        raise NstjaxError("checkpoint: not set; pass checkpoint=runs/<run_name>/checkpoints")
    if cfg.get("output") in (None, ""):
        raise NstjaxError("output: not set; pass output=NAME.nstjax.npz")
    step = cfg.get("step")
    if step is not None:
        try:
            step = int(step)
        except (TypeError, ValueError):
            raise NstjaxError(f"step: expected an integer or null, got {step!r}") from None
    return export_model(str(cfg.checkpoint), str(cfg.output), step=step, kind=str(cfg.format),
                        platforms=_platforms(cfg.get("platforms")))


@hydra.main(config_path="pkg://nstjax.conf", config_name="export", version_base="1.3")
@cli_errors
def main(cfg: DictConfig) -> None:
    from nstjax.stylize import quiet_jax_logs

    quiet_jax_logs()
    meta = run_export(cfg)
    size = Path(str(cfg.output)).stat().st_size
    extra = ""
    if meta["kind"] == "stablehlo":
        extra = f" for {','.join(meta['stablehlo']['platforms'])}, symbolic batch/height/width"
    m = meta["model"]
    print(f"wrote {cfg.output} ({size / 1e6:.1f} MB, {meta['kind']}{extra}): {m.get('name')} "
          f"width {m.get('width')} x{m.get('num_residual')} blocks, {meta['num_params']:,} params, "
          f"step {meta['source'].get('step')}")


if __name__ == "__main__":
    main()
