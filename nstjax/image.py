"""Image I/O that never surprises: any mode in, float32 RGB in [0, 1] out; atomic writes."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nstjax.atomic import write_bytes_atomic
from nstjax.errors import NstjaxError

#: Pixel budget of one decoded image (a 1 MB PNG can hold 400 MP); $NSTJAX_MAX_PIXELS overrides it.
MAX_PIXELS = int(os.environ.get("NSTJAX_MAX_PIXELS", 1 << 27))
Image.MAX_IMAGE_PIXELS = None  # the budget above is checked before decoding, with a clear message

#: Files that count as images when a folder is read (training photos, inference inputs).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"})
#: Formats nstjax writes images in (8-bit RGB).
OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to float32 RGB in [0, 1]."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / peak, 0.0, 1.0)
        return np.repeat(a[..., None], 3, axis=-1).astype(np.float32)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        a = np.clip(a / 255.0 if a.max(initial=0) > 1.0 else a, 0.0, 1.0)
        return np.repeat(a[..., None], 3, axis=-1)
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite transparent pixels over white: what an image viewer shows.
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike, *, what: str = "image") -> np.ndarray:
    """Read an image file as (H, W, 3) float32 RGB in [0, 1], honouring EXIF orientation.

    Images over `MAX_PIXELS` are refused before decoding. Whatever the bytes are, the only
    error is a one-line NstjaxError.
    """
    p = Path(path)
    if not p.exists():
        raise NstjaxError(f"{what} {str(path)!r}: file not found")
    if p.is_dir():
        raise NstjaxError(f"{what} {str(path)!r}: is a directory, expected an image file")
    try:
        with Image.open(p) as im:
            check_pixels(im.size, f"{what} {str(path)!r}")
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = to_rgb_array(im)
    except NstjaxError:
        raise
    except UnidentifiedImageError:
        raise NstjaxError(f"{what} {str(path)!r}: not a readable image (unknown format or corrupt)") from None
    except MemoryError:
        raise NstjaxError(f"{what} {str(path)!r}: not enough memory to decode it") from None
    except Exception as e:  # Pillow's decoders raise many types for damaged files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NstjaxError(f"{what} {str(path)!r}: cannot decode image ({detail})") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise NstjaxError(f"{what} {str(path)!r}: image is empty")
    return arr


def check_pixels(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise NstjaxError(f"{what}: {w}x{h} is {w * h / 1e6:.0f} MP, over the {MAX_PIXELS / 1e6:.0f} MP budget "
                          "(set NSTJAX_MAX_PIXELS to allow it, or downscale it first)")


def fit_size(hw: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(H, W) scaled so the longer side is `long_side`, keeping the aspect ratio."""
    h, w = hw
    s = long_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """High-quality resize of a float RGB image to exactly (H, W) (Lanczos when shrinking)."""
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    pil = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
    shrinking = h * w < img.shape[0] * img.shape[1]
    pil = pil.resize((w, h), Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.float32) / 255.0


def load_resized(path: str | os.PathLike, long_side: int | None, *, what: str = "image") -> np.ndarray:
    """load_image, then scale so the longer side is `long_side` (None keeps the original size)."""
    img = load_image(path, what=what)
    if long_side is None:
        return img
    return resize(img, fit_size(img.shape[:2], long_side))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(img, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def save_image(img: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) float image atomically (temp file + rename), creating parent dirs."""
    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None or p.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise NstjaxError(f"output {str(path)!r}: unknown image extension (use .png or .jpg)")
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return write_bytes_atomic(buf.getvalue(), p)
