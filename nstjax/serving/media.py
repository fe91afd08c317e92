"""Inference inputs and outputs: images, folders, animations and videos, read and written.

Inputs are frame iterators (key, float32 HxWx3 in [0, 1]); every output file is written
atomically (`nstjax.atomic.AtomicPath`): a stopped run never leaves a half-written file.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nstjax.atomic import AtomicPath
from nstjax.errors import NstjaxError
from nstjax.image import IMAGE_EXTENSIONS, OUTPUT_EXTENSIONS, check_pixels

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
ANIM_EXTS = (".gif", ".webp", ".png", ".apng")  # Pillow writes all of these with save_all=True
DEFAULT_FPS = 10.0
def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


# --------------------------------------------------------------------------------------
# Inputs


@dataclass
class Source:
    kind: str  # image | folder | animation | video
    frames: Callable[[], Iterator[tuple[Any, np.ndarray]]]  # (key, float32 HxWx3 in [0,1])
    count: int | None
    durations: list[int] | None = None  # animation: ms per frame
    loop: int | None = None
    fps: float | None = None
    skipped: int = 0  # unreadable inputs passed over (folders)
    root: Path | None = None  # a folder input: outputs mirror its sub-directories
    path: Path | None = None  # a video input: read again by the video pipeline


def _prep(img: np.ndarray, size: int | None) -> np.ndarray:
    from nstjax.image import fit_size, resize

    return img if size is None else resize(img, fit_size(img.shape[:2], size))


def _open_animation(path: Path) -> tuple[int, int | None] | None:
    """(frames, loop) if ``path`` is a multi-frame image, else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            check_pixels(im.size, f"input {str(path)!r}")
            n = int(getattr(im, "n_frames", 1))
            return (n, im.info.get("loop")) if n > 1 else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NstjaxError(f"input {str(path)!r}: not a readable image ({type(e).__name__}: {e})") from None


def _animation_frames(path: Path, size: int | None, durations: list[int]) -> Iterator[tuple[Any, np.ndarray]]:
    from PIL import Image, ImageSequence

    from nstjax.image import to_rgb_array

    try:
        with Image.open(path) as im:
            for i, frame in enumerate(ImageSequence.Iterator(im)):
                durations.append(int(frame.info.get("duration", im.info.get("duration", 100)) or 0))
                yield i, _prep(to_rgb_array(frame.copy()), size)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise NstjaxError(f"input {str(path)!r}: cannot decode animation frame ({e})") from None


def _folder_frames(files: list[Path], size: int | None, src: Source) -> Iterator[tuple[Any, np.ndarray]]:
    """A folder's images in order; an unreadable one is skipped and counted, never fatal."""
    from nstjax.image import load_image

    for f in files:
        try:
            img = load_image(f, what="input")
        except NstjaxError as e:
            log.warning("skipping %s", e)
            src.skipped += 1
            continue
        yield f, _prep(img, size)


def folder_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively (hidden entries skipped), in natural order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath, f) for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda f: [_natural_key(Path(part)) for part in f.relative_to(root).parts])


def open_source(path: str, size: int | None, exclude: Callable[[Path], bool] | None = None) -> Source:
    """`exclude(file)` passes over files of a folder before they are read (outputs that exist)."""
    from nstjax.image import load_image

    p = Path(path).expanduser()
    if not p.exists():
        raise NstjaxError(f"input {path!r}: file or directory not found")
    if p.is_dir():
        files = folder_images(p)
        if not files:
            raise NstjaxError(f"input {path!r}: directory has no image files")
        src = Source("folder", lambda: _folder_frames([f for f in files if not (exclude and exclude(f))], size, src),
                     len(files), root=p)
        return src
    suffix = p.suffix.lower()
    if suffix in VIDEO_EXTS:
        from nstjax.serving.video import probe, read_frames

        info = probe(p)

        def video_frames() -> Iterator[tuple[Any, np.ndarray]]:
            try:
                for i, frame in enumerate(read_frames(p)):
                    yield i, _prep(frame.astype(np.float32) / 255.0, size)
            except NstjaxError:
                raise
            except Exception as e:
                raise NstjaxError(f"input {path!r}: cannot decode video ({type(e).__name__}: {e})") from None

        return Source("video", video_frames, info.frames, fps=float(info.fps), path=p)
    if suffix not in IMAGE_EXTENSIONS:
        raise NstjaxError(
            f"input {path!r}: unknown extension {p.suffix or '(none)'!r}; expected an image, an animated "
            f"GIF/WebP/PNG, a video ({', '.join(VIDEO_EXTS)}) or a directory of images/frames"
        )
    anim = _open_animation(p)
    if anim is None:
        return Source("image", lambda: iter([(p, _prep(load_image(p, what="input"), size))]), 1)
    n, loop = anim
    durations: list[int] = []
    return Source("animation", lambda: _animation_frames(p, size, durations), n,
                  durations=durations, loop=loop)


# --------------------------------------------------------------------------------------
# Outputs


def output_name(key: Any, kind: str, root: Path | None = None) -> str:
    """Path of one result inside an output directory: the input's path relative to the input
    folder (or its name), with an extension nstjax writes; frame_NNNNN.png for frames."""
    if kind in ("image", "folder"):
        rel = Path(key).relative_to(root) if root is not None else Path(Path(key).name)
        return str(rel if rel.suffix.lower() in OUTPUT_EXTENSIONS else rel.with_suffix(".png"))  # .gif, .ppm
    return f"frame_{int(key):05d}.png"


def save_animation(frames: list[np.ndarray], path: Path, durations: list[int], loop: int | None) -> None:
    from PIL import Image

    from nstjax.image import to_uint8

    ims = [Image.fromarray(to_uint8(f)) for f in frames]
    kw: dict[str, Any] = {"save_all": True, "append_images": ims[1:], "duration": list(durations)}
    fmt = {".gif": "GIF", ".webp": "WEBP", ".png": "PNG", ".apng": "PNG"}[path.suffix.lower()]
    if fmt == "WEBP":
        kw["lossless"] = False
        kw["quality"] = 90
    if loop is not None or fmt != "GIF":
        kw["loop"] = 0 if loop is None else int(loop)
    with AtomicPath(path, suffix=path.suffix) as tmp:
        ims[0].save(tmp, format=fmt, **kw)


class VideoWriter:
    """Streams frames (any source) into an H.264 video; the file appears (renamed) on close()."""

    def __init__(self, path: Path, fps: float) -> None:
        from fractions import Fraction

        from nstjax.serving.video import _av

        self.av = _av(f"output {str(path)!r}")
        self.target = AtomicPath(path, suffix=path.suffix)
        self.out = self.av.open(str(self.target.tmp), mode="w")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.stream = None
        self.n = 0

    def append(self, frame: np.ndarray) -> None:
        from nstjax.image import to_uint8

        rgb = to_uint8(frame)
        if self.stream is None:
            codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
            self.stream = self.out.add_stream(codec, rate=self.fps)
            self.stream.width, self.stream.height = rgb.shape[1] + rgb.shape[1] % 2, rgb.shape[0] + rgb.shape[0] % 2
            self.stream.pix_fmt = "yuv420p"
        pad = ((0, self.stream.height - rgb.shape[0]), (0, self.stream.width - rgb.shape[1]), (0, 0))
        vf = self.av.VideoFrame.from_ndarray(np.pad(rgb, pad, mode="edge"), format="rgb24")
        vf.pts = self.n
        self.n += 1
        self.out.mux(self.stream.encode(vf))

    def close(self, ok: bool) -> None:
        try:
            if self.stream is not None:
                self.out.mux(self.stream.encode())
            self.out.close()
        except BaseException:
            self.target.abort()
            raise
        if ok:
            self.target.commit()
        else:
            self.target.abort()


def check_output(src: Source, inp: Path, out: Path) -> str:
    """Where results go: 'image' file, 'dir' (one file per input), 'anim' or 'video' file."""
    suffix = out.suffix.lower()
    if out.exists() and out.resolve() == inp.resolve():
        raise NstjaxError(f"output {str(out)!r} is the input; choose another path so the input is not overwritten")
    if src.kind == "image":
        if out.is_dir() or not suffix:
            return "dir"
        if suffix not in OUTPUT_EXTENSIONS:
            raise NstjaxError(f"output {str(out)!r}: unknown image extension (use .png or .jpg)")
        return "image"
    if out.is_dir() or not suffix:
        return "dir"
    if suffix in VIDEO_EXTS:
        from nstjax.serving.video import _av

        _av(f"output {str(out)!r}")
        return "video"
    # For a folder, out.png most likely means a mistake, not an APNG: ask for .apng explicitly.
    anim = ANIM_EXTS if src.kind != "folder" else tuple(e for e in ANIM_EXTS if e != ".png")
    if suffix in anim:
        return "anim"
    raise NstjaxError(
        f"output {str(out)!r}: for {src.kind} input give a directory (one image per "
        f"{'file' if src.kind == 'folder' else 'frame'}), an animation ({', '.join(anim)}) or a video "
        f"({', '.join(VIDEO_EXTS)})"
    )
