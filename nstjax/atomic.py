"""Atomic file writes: a reader (or a crash) never sees a half-written output."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temp file into place with umask permissions (mkstemp makes it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    return write_bytes_atomic(json.dumps(data, indent=2).encode(), path)
