"""pytorch/examples' fast_neural_style checkpoints (`.pth` state dicts) read without torch.

Both of torch's file formats: the zip archive (torch >= 1.6) and the legacy stream of pickles
(older torch, like the published 2017 models). The pickles are read with a restricted
unpickler that builds tensors as numpy arrays and refuses every other global, so no code in
the file runs. The TransformerNet there takes and returns pixels in 0..255; the imported
network keeps that with `pixel_scale=255` in its config.
"""
from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.errors import NstjaxError

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": np.uint16}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
    def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
        self.dtype, self.numel, self.data = np.dtype(dtype), numel, data


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *args: Any) -> np.ndarray:
    if storage.data is None:
        raise pickle.UnpicklingError("tensor storage has no data")
    flat = storage.data
    item = flat.dtype.itemsize
    if not size:
        return np.array(flat[offset])
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size), strides=tuple(s * item for s in stride))
    return np.array(view)  # a copy: contiguous, independent of the storage


def _rebuild_parameter(data: np.ndarray, *args: Any) -> np.ndarray:
    return data


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _DTYPES[name]


class _Unpickler(pickle.Unpickler):
    """Only what a state dict of tensors needs; anything else is refused, not run."""

    def __init__(self, f: Any, load_storage: Any, rebuild: Any = None):
        super().__init__(f)
        self._load_storage = load_storage
        self._rebuild = rebuild or _rebuild_tensor

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return self._rebuild
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a tensor state dict)")

    def persistent_load(self, pid: Any) -> Any:
        return self._load_storage(pid)


def _zip_state(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        root = pkl[: -len("data.pkl")]
        cache: dict[str, _Storage] = {}

        def load(pid: Any) -> _Storage:
            kind, storage_type, key, _location, numel = pid[:5]
            if kind != "storage":
                raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.float32
            if key not in cache:
                raw = z.read(f"{root}data/{key}")
                cache[key] = _Storage(dtype, numel, np.frombuffer(raw, dtype=dtype).copy())
            return cache[key]

        return _Unpickler(io.BytesIO(z.read(pkl)), load).load()


def _legacy_state(path: Path) -> Any:
    with open(path, "rb") as f:
        def plain() -> Any:
            return _Unpickler(f, lambda pid: (_ for _ in ()).throw(pickle.UnpicklingError("unexpected storage"))).load()

        if plain() != _LEGACY_MAGIC:  # any pickle protocol: torch.save(pickle_protocol=...)
            raise pickle.UnpicklingError("not a torch file (bad magic number)")
        plain()  # protocol version
        plain()  # sys info
        storages: dict[str, _Storage] = {}

        def load(pid: Any) -> _Storage:
            kind = pid[0]
            if kind != "storage":
                raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
            storage_type, key, _location, numel = pid[1:5]
            if pid[5] is not None:
                raise pickle.UnpicklingError("storage views are not supported")
            if key not in storages:
                storages[key] = _Storage(storage_type.dtype, numel)
            return storages[key]

        state = _Unpickler(f, load, rebuild=lambda *args: _Pending(args)).load()  # data comes after
        keys = plain()
        for key in keys:  # each storage: its element count, then its bytes
            numel = struct.unpack("<q", f.read(8))[0]
            s = storages[key]
            raw = f.read(numel * s.dtype.itemsize)
            if len(raw) != numel * s.dtype.itemsize:
                raise pickle.UnpicklingError("truncated storage data")
            s.data = np.frombuffer(raw, dtype=s.dtype).copy()
    return _resolve(state)  # the tensors, now that their storages hold data


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _Pending):
        return obj.build()
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    return obj


class _Pending:
    def __init__(self, args: tuple):
        self.args = args

    def build(self) -> np.ndarray:
        return _rebuild_tensor(*self.args)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A torch `.pth` state dict as {name: numpy array}, without torch and without running code."""
    p = Path(path)
    try:
        state = _zip_state(p) if zipfile.is_zipfile(p) else _legacy_state(p)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError, TypeError, IndexError,
            AttributeError, zipfile.BadZipFile, OSError, OverflowError, MemoryError, RecursionError) as e:
        # Random bytes make an unpickler ask for 2**63 bytes (Overflow/MemoryError) or echo raw text.
        why = " ".join(str(e).split())[:200]
        raise NstjaxError(f"{str(p)!r} is not a readable torch state dict ({type(e).__name__}: {why})") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise NstjaxError(f"{str(p)!r} holds no state dict of tensors (is it a whole pickled model?)")
    return dict(state)


# --------------------------------------------------------------------------- TransformerNet


def _johnson_name(key: str) -> tuple[str, bool] | None:
    """torch name -> (nstjax name, is a conv kernel); None for entries to drop."""
    if re.search(r"running_(mean|var)$|num_batches_tracked$", key):
        return None  # InstanceNorm running stats of old torch versions: unused, as pytorch/examples drops them
    m = re.fullmatch(r"res(\d+)\.(conv[12]|in[12])\.(.+)", key)
    if m:
        prefix, key = f"res/{int(m.group(1)) - 1}/", f"{m.group(2)}.{m.group(3)}"
    else:
        prefix = ""
    m = re.fullmatch(r"(conv\d|deconv\d)\.conv2d\.(weight|bias)", key)
    if m:
        layer, what = m.groups()
        inner = "conv/conv" if layer in ("deconv1", "deconv2") else "conv"
        return f"{prefix}{layer}/{inner}/{'kernel' if what == 'weight' else 'bias'}", what == "weight"
    m = re.fullmatch(r"(in\d)\.(weight|bias)", key)
    if m:
        return f"{prefix}{m.group(1)}/{'scale' if m.group(2) == 'weight' else 'bias'}", False
    raise NstjaxError(f"unexpected entry {key!r}: not a pytorch/examples TransformerNet state dict")


def johnson_from_state_dict(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(flat nstjax params, model config) of pytorch/examples' TransformerNet weights."""
    if "conv1.conv2d.weight" not in state:
        raise NstjaxError("not a pytorch/examples TransformerNet state dict (no conv1.conv2d.weight)")
    params: dict[str, np.ndarray] = {}
    for key, value in state.items():
        named = _johnson_name(key)
        if named is None:
            continue
        name, kernel = named
        value = np.asarray(value, np.float32)
        params[name] = np.ascontiguousarray(value.transpose(2, 3, 1, 0)) if kernel else value  # OIHW -> HWIO
    c1 = state["conv1.conv2d.weight"].shape[0]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"res(\d+)\.", k))}
    model = {"name": "johnson", "width": c1 / 32, "num_residual": len(blocks), "dtype": "float32",
             "pixel_scale": 255.0}
    return params, model
