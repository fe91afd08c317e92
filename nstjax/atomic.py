"""Atomic file writes: a reader (or a crash) never sees a half-written output.

Everything nstjax writes (images, reports, artifacts, downloads, animations, videos) goes
through `AtomicPath`: write to a temp file beside the target, then rename it into place.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temp file into place with umask permissions (mkstemp makes it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


class AtomicPath:
    """A temp path beside `path` that becomes `path` on `commit()` and disappears on `abort()`.

    As a context manager it commits when the block succeeds and aborts when it raises:

        with AtomicPath(out, suffix=".png") as tmp:
            image.save(tmp)
    """

    def __init__(self, path: str | os.PathLike, *, suffix: str = ".tmp", fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=suffix)
        os.close(fd)
        self.tmp = Path(tmp)
        self.fsync = fsync
        self._done = False

    def commit(self) -> Path:
        if not self._done:
            self._done = True
            if self.fsync:  # the data is on disk before the name points at it
                with open(self.tmp, "rb+") as f:
                    os.fsync(f.fileno())
            publish(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def check_writable(path: str | os.PathLike, what: str, *, directory: bool = False) -> None:
    """Fail now, in one line, if `path` (a file, or files in a `directory`) could not be
    written: before hours of work, not after."""
    from nstjax.errors import NstjaxError

    if directory and Path(path).exists() and not Path(path).is_dir():
        raise NstjaxError(f"{what} {str(path)!r}: is a file, not a directory")
    try:
        AtomicPath(Path(path) / ".write-test" if directory else path).abort()
    except OSError as e:
        raise NstjaxError(f"{what} {str(path)!r}: cannot write there ({e.strerror or e})") from None


def write_bytes_atomic(data: bytes, path: str | os.PathLike, *, fsync: bool = False) -> Path:
    target = AtomicPath(path, fsync=fsync)
    with target as tmp:
        tmp.write_bytes(data)
    return target.path


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    return write_bytes_atomic(json.dumps(data, indent=2).encode(), path)
