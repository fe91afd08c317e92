"""CLI: fast stylization with a trained feed-forward network.

    python -m nstjax.infer model_path=mosaic.nstjax.npz input=photo.jpg output=out.jpg
    python -m nstjax.infer model_path=runs/mosaic/checkpoints input=photos/ output=styled/ size=512
    python -m nstjax.infer model_path=mosaic.nstjax.npz input=clip.gif output=clip_mosaic.gif batch=8
    python -m nstjax.infer model_path=mosaic.nstjax.npz input=frames/ output=anim.gif fps=12
    python -m nstjax.infer model_path=mosaic.nstjax.npz input=clip.mp4 output=out.mp4  # needs imageio[ffmpeg]

(``model_path``, not ``model``: ``model`` is a Hydra config group of the training config.)

``model_path`` is an artifact from ``python -m nstjax.export`` or a training checkpoint
directory. ``input`` is an image, a directory of images or frames, an animated GIF/WebP/PNG
(every frame, per-frame durations and the loop count kept), or a video file (read and written
with imageio only when it is installed). The network is compiled once per input shape; frames
of one animation share a single executable because the last partial batch is padded to
``batch`` with copies of its last frame (instance norm is per image, so padding changes nothing).
The report line gives the network time per image after compilation.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from nstjax.errors import NstjaxError, cli_errors
from nstjax.atomic import publish

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
ANIM_EXTS = (".gif", ".webp", ".png", ".apng")  # Pillow writes all of these with save_all=True
OUT_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_FPS = 10.0
IMAGEIO_HINT = ("install it with `pip install 'imageio[ffmpeg]'`, or extract the frames to a directory "
                "(ffmpeg -i IN frames/%05d.png) and pass input=frames/")


def _image_exts() -> set[str]:
    from PIL import Image

    return {e.lower() for e in Image.registered_extensions()}


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _imageio(what: str) -> Any:
    """imageio's v2 API with its FFMPEG plugin (what `pip install 'imageio[ffmpeg]'` provides)."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the plugin's ffmpeg binary)
    except ImportError:
        raise NstjaxError(
            f"{what}: video files need imageio with ffmpeg, which is not installed; {IMAGEIO_HINT}"
        ) from None
    # imageio runs ffmpeg with subprocess (fork + immediate exec), which is safe; JAX's
    # "os.fork() was called" warning would only be noise here.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    return imageio


# --------------------------------------------------------------------------------------
# Batched, shape-cached running with timing


@dataclass
class RunStats:
    images: int = 0
    seconds: float = 0.0  # network time after compilation (host<->device copies included)
    shapes: set = field(default_factory=set)

    @property
    def ms_per_image(self) -> float:
        return 1e3 * self.seconds / self.images if self.images else float("nan")


def stylize_stream(
    stylizer: Any,
    items: Iterable[tuple[Any, np.ndarray]],
    *,
    batch: int,
    stats: RunStats,
) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """(key, content) pairs -> (key, content, stylized) in input order, in batches of ``batch``.

    Consecutive same-shape items form a batch. A partial batch (the end of an animation) is
    padded with copies of its last image when that shape already has a full-batch executable,
    so all frames of a clip share one compile; a lone image runs at its own batch size.
    """
    pending: list[tuple[Any, np.ndarray]] = []

    def flush() -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        n = len(pending)
        x = np.stack([img for _, img in pending])
        full = (batch, *x.shape[1:])
        if n < batch and stylizer.is_compiled(full):  # reuse the full-batch executable
            x = np.concatenate([x, np.repeat(x[-1:], batch - n, axis=0)])
        stylizer.compile(x.shape)  # outside the timed region
        stats.shapes.add(x.shape)
        t0 = time.perf_counter()
        y = stylizer(x)
        stats.seconds += time.perf_counter() - t0
        stats.images += n
        out = [(key, img, y[i]) for i, (key, img) in enumerate(pending)]
        pending.clear()
        yield from out

    for key, img in items:
        if pending and (img.shape != pending[0][1].shape or len(pending) == batch):
            yield from flush()
        pending.append((key, img))
    if pending:
        yield from flush()


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


def _prep(img: np.ndarray, size: int | None) -> np.ndarray:
    from nstjax.image import fit_size, resize

    return img if size is None else resize(img, fit_size(img.shape[:2], size))


def _open_animation(path: Path) -> tuple[int, int | None] | None:
    """(frames, loop) if ``path`` is a multi-frame image, else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
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


def open_source(path: str, size: int | None) -> Source:
    from nstjax.image import load_image

    p = Path(path).expanduser()
    if not p.exists():
        raise NstjaxError(f"input {path!r}: file or directory not found")
    if p.is_dir():
        exts = _image_exts()
        files = sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts
                        and not f.name.startswith(".")), key=_natural_key)
        if not files:
            raise NstjaxError(f"input {path!r}: directory has no image files")
        return Source("folder", lambda: ((f, _prep(load_image(f, what="input"), size)) for f in files),
                      len(files))
    suffix = p.suffix.lower()
    if suffix in VIDEO_EXTS:
        iio = _imageio(f"input {path!r}")
        try:
            reader = iio.get_reader(str(p), format="FFMPEG")
            fps = reader.get_meta_data().get("fps")
        except Exception as e:
            raise NstjaxError(f"input {path!r}: cannot read video ({type(e).__name__}: {e})") from None

        def video_frames() -> Iterator[tuple[Any, np.ndarray]]:
            try:
                for i, frame in enumerate(reader):
                    a = np.asarray(frame)
                    a = a[..., :3] if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1)
                    yield i, _prep(a.astype(np.float32) / 255.0, size)
            except Exception as e:
                raise NstjaxError(f"input {path!r}: cannot decode video ({type(e).__name__}: {e})") from None
            finally:
                reader.close()

        return Source("video", video_frames, None, fps=float(fps) if fps else None)
    if suffix not in _image_exts():
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


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    _atomic(path, lambda tmp: ims[0].save(tmp, format=fmt, **kw))


class VideoWriter:
    """Streams frames into a video via imageio/ffmpeg; the file appears (renamed) on close()."""

    def __init__(self, path: Path, fps: float) -> None:
        iio = _imageio(f"output {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        os.close(fd)
        self.path = path
        # macro_block_size=2: even sides for yuv420p, no resizing to multiples of 16.
        self.writer = iio.get_writer(self.tmp, format="FFMPEG", fps=fps, macro_block_size=2)

    def append(self, frame: np.ndarray) -> None:
        from nstjax.image import to_uint8

        self.writer.append_data(to_uint8(frame))

    def close(self, ok: bool) -> None:
        self.writer.close()
        if ok:
            publish(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)


def _check_output(src: Source, inp: Path, out: Path, image_exts: set[str]) -> str:
    """Where results go: 'image' file, 'dir' (one file per input), 'anim' or 'video' file."""
    suffix = out.suffix.lower()
    if out.exists() and out.resolve() == inp.resolve():
        raise NstjaxError(f"output {str(out)!r} is the input; choose another path so the input is not overwritten")
    if src.kind == "image":
        if out.is_dir() or not suffix:
            return "dir"
        if suffix not in image_exts:
            raise NstjaxError(f"output {str(out)!r}: unknown image extension (use .png or .jpg)")
        return "image"
    if out.is_dir() or not suffix:
        return "dir"
    if suffix in VIDEO_EXTS:
        _imageio(f"output {str(out)!r}")
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


# --------------------------------------------------------------------------------------
# The command


def run_infer(cfg: DictConfig) -> dict[str, Any]:
    import jax

    from nstjax import color as colorlib
    from nstjax.export import load_stylizer
    from nstjax.image import save_image

    for key, hint in (("model_path", "an artifact from nstjax.export or runs/<run_name>/checkpoints"),
                      ("input", "an image, a directory, an animated GIF or a video"),
                      ("output", "an image file, a directory, or an animation/video file")):
        if cfg.get(key) in (None, ""):
            raise NstjaxError(f"{key}: not set; pass {key}=PATH ({hint})")
    size = cfg.get("size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise NstjaxError(f"size: expected a positive long side in pixels or null, got {size!r}")
    batch = cfg.get("batch", 1)
    if not isinstance(batch, int) or batch < 1:
        raise NstjaxError(f"batch: expected a positive integer, got {batch!r}")
    mode = str(cfg.get("color", "none"))
    if mode not in ("none", "luminance"):
        raise NstjaxError(f"color: expected none or luminance, got {mode!r}")
    fps = cfg.get("fps")
    if fps is not None and (not isinstance(fps, (int, float)) or fps <= 0):
        raise NstjaxError(f"fps: expected a positive number or null, got {fps!r}")
    step = cfg.get("step")
    if step is not None and not isinstance(step, int):
        raise NstjaxError(f"step: expected an integer or null, got {step!r}")

    src = open_source(str(cfg.input), size)
    out = Path(str(cfg.output)).expanduser()
    target = _check_output(src, Path(str(cfg.input)).expanduser(), out, _image_exts())
    stylizer = load_stylizer(str(cfg.model_path), step=step, use_stablehlo=bool(cfg.get("stablehlo", True)))

    stats = RunStats()
    written: list[str] = []
    collected: list[np.ndarray] = []
    video = None
    if target == "video":
        # Animation durations are only known once read, so GIF -> video uses fps or the default.
        video = VideoWriter(out, float(fps or src.fps or DEFAULT_FPS))
    ok = False
    try:
        for key, content, y in stylize_stream(stylizer, src.frames(), batch=batch, stats=stats):
            y = np.clip(y, 0.0, 1.0)
            if mode == "luminance":
                y = colorlib.transfer_luminance(y, content)
            if target == "image":
                written.append(str(save_image(y, out)))
            elif target == "dir":
                if src.kind in ("image", "folder"):
                    name = Path(key).name
                    if Path(name).suffix.lower() not in OUT_IMAGE_EXTS:  # e.g. .gif, .ppm
                        name = Path(name).stem + ".png"
                else:
                    name = f"frame_{int(key):05d}.png"
                written.append(str(save_image(y, out / name)))
            elif video is not None:
                video.append(y)
            else:
                collected.append(y)
        ok = True
    finally:
        if video is not None:
            video.close(ok)
    if target == "anim":
        durations = src.durations or []
        if len(durations) != len(collected):  # a frame directory or video: fps (default 10) per frame
            durations = [round(1000.0 / float(fps or src.fps or DEFAULT_FPS))] * len(collected)
        # A GIF that played once stays so; animations made from frames or a video loop.
        save_animation(collected, out, durations, src.loop if src.kind == "animation" else 0)
        written.append(str(out))
    elif target == "video":
        written.append(str(out))
    dev = jax.devices()[0]
    return {
        "output": str(out),
        "written": written,
        "input_kind": src.kind,
        "images": stats.images,
        "shapes": sorted(list(s) for s in stats.shapes),
        "compiles": len(stylizer.compile_seconds),
        "compile_seconds": float(sum(stylizer.compile_seconds.values())),
        "ms_per_image": stats.ms_per_image,
        "batch": batch,
        "backend": stylizer.backend,
        "model": stylizer.model,
        "device": f"{dev.platform}:{dev.device_kind}",
        "durations": list(src.durations) if target == "anim" and src.durations else None,
    }


@hydra.main(config_path="pkg://nstjax.conf", config_name="infer", version_base="1.3")
@cli_errors
def main(cfg: DictConfig) -> None:
    from nstjax.stylize import quiet_jax_logs

    quiet_jax_logs()
    r = run_infer(cfg)
    what = r["written"][0] if len(r["written"]) == 1 else f"{len(r['written'])} files to {r['output']}"
    shapes = ", ".join("x".join(str(d) for d in s[1:3]) for s in r["shapes"])
    print(f"wrote {what}: {r['images']} image(s) at {shapes}, {r['ms_per_image']:.1f} ms/image after "
          f"{r['compile_seconds']:.2f} s compile ({r['compiles']} shape(s), batch {r['batch']}, "
          f"{r['backend']}, {r['device']})")


if __name__ == "__main__":
    main()
