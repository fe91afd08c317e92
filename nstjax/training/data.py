"""Training data for feed-forward style networks: one grain pipeline over two kinds of source.

Sources (random access, one encoded image per index):
  * ``data=folder``: every image file under ``data.path`` (recursive, sorted).
  * ``data=coco`` (or any TFDS dataset with an ``image`` feature): a TFDS dataset prepared in
    array_record format, read with TFDS' random-access data source. It is opened from its
    prepared files only, so neither TensorFlow nor the network is needed to train on it.

Pipeline (identical after the source):
  shuffle (reshuffled every epoch) -> repeat forever -> decode + random crop + flip (uint8,
  deterministic per element index) -> threads / worker processes -> batch of good images.

Unreadable images become a marker instead of an exception, and the batching step (which runs
in the main process, after any worker processes) drops them and counts them, so the count is
exact and the batches do not depend on ``data.workers``. Iterator state is a JSON-able dict.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grain
import numpy as np
from PIL import Image, ImageOps

from nstjax.errors import NstjaxError
from nstjax.image import IMAGE_EXTENSIONS, check_pixels, load_image, resize, to_rgb_array, to_uint8

if TYPE_CHECKING:
    from nstjax.config import DataConfig

log = logging.getLogger(__name__)

_BAD = np.zeros((0, 0, 3), np.uint8)  # marker for an image that could not be read or decoded
_STATE_VERSION = 1


# --------------------------------------------------------------------------- sources


class Encoded(NamedTuple):
    """One source record: a name for messages, the encoded bytes, or why they are missing."""

    name: str
    data: bytes
    error: str = ""


def list_images(root: str | os.PathLike, *, setting: str = "data.path") -> list[Path]:
    """Image files under `root` (recursive, hidden entries skipped), sorted for a stable order.

    Symlinked sub-directories are not followed (no risk of cycles); a symlinked root is fine.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise NstjaxError(f"{setting} {str(root)!r}: directory not found")
    if not path.is_dir():
        raise NstjaxError(f"{setting} {str(root)!r}: not a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [
            Path(dirpath, f)
            for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        ]
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise NstjaxError(f"{setting} {str(root)!r}: no image files found (looked for {exts})")
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


class FolderSource:
    """grain random-access source over image files: index -> Encoded (raw file bytes).

    Reading happens here (in grain's reader threads / worker processes), decoding later.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self._names = [p.relative_to(self.root).as_posix() for p in list_images(root)]

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> Encoded:
        name = self._names[index]
        try:
            return Encoded(name, (self.root / name).read_bytes())
        except OSError as e:
            return Encoded(name, b"", f"cannot read file ({e.strerror or e})")

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, {len(self)} images)"


class TfdsImageSource:
    """grain random-access source over a TFDS data source whose records hold encoded images."""

    def __init__(self, source: Sequence[dict], label: str, key: str = "image"):
        self._source = source
        self._label = label
        self._key = key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Encoded:
        name = f"{self._label}[{index}]"
        try:
            return Encoded(name, bytes(self._source[index][self._key]))
        except Exception as e:  # a damaged shard must not end a long run
            return Encoded(name, b"", f"cannot read record ({type(e).__name__}: {e})")

    def __repr__(self) -> str:
        return f"TfdsImageSource({self._label!r}, {len(self)} images)"


def _prepare_hint(tfds_name: str) -> str:
    how = ("`python -m nstjax.data prepare coco --dir DIR` (no TensorFlow needed)" if tfds_name == "coco/2017"
           else f"`tfds build {tfds_name} --file_format=array_record` (needs TensorFlow)")
    return (f"prepare it once in array_record format with {how} and point data.data_dir (or $TFDS_DATA_DIR) at "
            "that directory, or train on a folder of images with `data=folder data.path=DIR`")


def _open_builder(tfds_name: str, data_dir: str | None, where: str) -> Any:
    """The prepared dataset's read-only builder (from dataset_info.json; no builder code)."""
    from tensorflow_datasets.core import read_only_builder, registered

    try:
        return read_only_builder.builder_from_files(tfds_name, data_dir=data_dir)
    except (registered.DatasetNotFoundError, FileNotFoundError, ValueError):
        raise NstjaxError(
            f"TFDS dataset {tfds_name!r} is not prepared in {where}: {_prepare_hint(tfds_name)}"
        ) from None


def tfds_source(tfds_name: str, split: str, data_dir: str | None) -> TfdsImageSource:
    """Open a prepared TFDS dataset from its files (no builder code, so no TensorFlow needed).

    This is what ``tfds.data_source(name, split=..., data_dir=...)`` does for a prepared
    dataset, minus the fallback to the builder code, which for COCO imports TensorFlow.
    Images stay encoded (SkipDecoding) so they are decoded like folder images.
    """
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(str(data_dir)) if data_dir else None
    where = repr(data_dir) if data_dir else "the default TFDS data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    builder = _open_builder(tfds_name, data_dir, where)
    if "image" not in builder.info.features:
        raise NstjaxError(f"data.tfds_name {tfds_name!r}: dataset has no 'image' feature")
    random_access = tfds.core.FileFormat.with_random_access()
    if not builder.info.available_file_formats() & random_access:
        raise NstjaxError(
            f"TFDS dataset {tfds_name!r} in {where} is stored as {builder.info.file_format.value}, "
            f"which has no random access: {_prepare_hint(tfds_name)}"
        )
    try:
        source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except (ValueError, KeyError) as e:
        raise NstjaxError(f"data.split {split!r} of {tfds_name!r}: {e}") from None
    if len(source) == 0:
        raise NstjaxError(f"data.split {split!r} of {tfds_name!r} in {where} is empty")
    return TfdsImageSource(source, f"{tfds_name}:{split}")


Source = Any  # random access: len(source), source[i] -> Encoded
#: Training data sources by `data.name`: a function of the data config -> a random-access source.
SOURCES: dict[str, Callable[["DataConfig"], Source]] = {}


def register_source(name: str, factory: Callable[["DataConfig"], Source]) -> None:
    SOURCES[name] = factory


def _folder(data: DataConfig) -> FolderSource:
    if not data.path:
        raise NstjaxError("data.path is not set: use `data=folder data.path=DIR` (or set NSTJAX_ASSETS to an "
                          "assets directory holding data/photos/train)")
    return FolderSource(data.path)


def _tfds(data: DataConfig) -> TfdsImageSource:
    if not data.tfds_name:
        raise NstjaxError(f"data.tfds_name is not set for data={data.name}")
    return tfds_source(data.tfds_name, data.split or "train", data.data_dir)


register_source("folder", _folder)
register_source("coco", _tfds)


def make_source(data: DataConfig) -> Source:
    """The random-access source named by `data.name` (any name with a `tfds_name` reads TFDS)."""
    factory = SOURCES.get(data.name) or (_tfds if data.tfds_name else None)
    if factory is None:
        raise NstjaxError(f"unknown data.name {data.name!r}; available: {', '.join(sorted(SOURCES))}")
    return factory(data)


# --------------------------------------------------------------------------- decoding


def short_side_hw(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(H, W) scaled so the shorter side is `size` (never below `size` from rounding)."""
    h, w = hw
    s = size / min(h, w)
    return max(size, round(h * s)), max(size, round(w * s))


def _rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as RGB; alpha is composited over white (same rules as nstjax.image)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    return Image.fromarray(to_uint8(to_rgb_array(im)))


def decode_short_side(data: bytes, size: int) -> Image.Image:
    """Decode, apply EXIF orientation, convert to RGB and resize so the short side is `size`.

    JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger
    than needed, which is most of the decoding cost for COCO-sized photos.
    """
    with Image.open(io.BytesIO(data)) as im:
        check_pixels(im.size, "training image")
        w, h = im.size
        s = size / min(w, h)
        if s < 1:
            im.draft(None, (int(np.ceil(w * s)), int(np.ceil(h * s))))
        im.load()
        im = _rgb(ImageOps.exif_transpose(im))
    h, w = short_side_hw((im.height, im.width), size)
    return im.resize((w, h), Image.Resampling.BICUBIC) if (h, w) != (im.height, im.width) else im


class DecodeCropFlip(grain.transforms.RandomMap):
    """Encoded -> uint8 (size, size, 3): short-side resize (to `resize`, default `size`), random
    crop, random horizontal flip.

    A `resize` above `size` crops windows of the photo at the scale of use (e.g. 128 px windows
    of a photo seen at 512 px), so the network learns strokes for scenes at that scale.
    Returns the `_BAD` marker (and logs why) instead of raising, so one bad file never stops
    training; the batching step drops and counts markers.
    """

    def __init__(self, size: int, resize: int | None = None):
        self.size = size
        self.resize = resize or size

    def random_map(self, element: Encoded, rng: np.random.Generator) -> np.ndarray:
        if element.error:
            log.warning("skipping image %s: %s", element.name, element.error)
            return _BAD
        try:
            im = decode_short_side(element.data, self.resize)
        except Exception as e:  # PIL raises many types for corrupt, truncated or odd files
            log.warning("skipping unreadable image %s: %s: %s", element.name, type(e).__name__, e)
            return _BAD
        x = int(rng.integers(0, im.width - self.size + 1))
        y = int(rng.integers(0, im.height - self.size + 1))
        im = im.crop((x, y, x + self.size, y + self.size))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        return np.asarray(im, dtype=np.uint8)


# --------------------------------------------------------------------------- batching


class GoodBatchDataset(grain.IterDataset):
    """Batches `batch_size` decodable images as float32 in [0, 1], counting skipped markers.

    Runs after worker processes, in the main process: the element stream reaching it is the
    same for any number of workers, so batches and the skip count are too. Holds no elements
    between batches, so its state is its parent's state.
    """

    def __init__(self, parent: grain.IterDataset, batch_size: int, give_up_after: int, what: str):
        super().__init__(parent)
        self.batch_size = batch_size
        self.give_up_after = give_up_after
        self.what = what

    def __iter__(self) -> "_GoodBatchIterator":
        return _GoodBatchIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"GoodBatchDataset(batch_size={self.batch_size})"


class _GoodBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, spec: GoodBatchDataset):
        super().__init__(parent)
        self._spec = spec

    def __next__(self) -> dict[str, np.ndarray]:
        images: list[np.ndarray] = []
        skipped = bad_run = 0
        while len(images) < self._spec.batch_size:
            image = next(self._parent)
            if image.size:
                images.append(image)
                bad_run = 0
                continue
            skipped += 1
            bad_run += 1
            if bad_run >= self._spec.give_up_after:
                raise NstjaxError(f"{self._spec.what}: no readable image in {bad_run} tries in a row")
        batch = np.divide(np.stack(images), np.float32(255), dtype=np.float32)
        return {"image": batch, "skipped": np.int64(skipped)}

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)

    def __str__(self) -> str:
        return str(self._spec)


# --------------------------------------------------------------------------- public API


class TrainIterator:
    """Infinite iterator of float32 (B, size, size, 3) batches with a JSON-able state.

    ``skipped`` counts unreadable images dropped so far; it is part of the state, so a resumed
    run keeps counting. It is counted when a batch leaves grain, i.e. up to the host prefetch
    depth (plus any prefetch_to_device depth) ahead of the training step.
    """

    def __init__(self, it: grain.DatasetIterator, workers: int):
        self._it: grain.DatasetIterator | None = it
        self._workers = workers
        self.skipped = 0

    def __iter__(self) -> "TrainIterator":
        return self

    def _live(self) -> grain.DatasetIterator:
        if self._it is None:
            raise ValueError("data iterator is closed")
        return self._it

    def __next__(self) -> np.ndarray:
        batch = next(self._live())
        self.skipped += int(batch["skipped"])
        return batch["image"]

    def get_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "workers": self._workers,
            "skipped": self.skipped,
            "grain": self._live().get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise NstjaxError("data iterator state in the checkpoint is not from this nstjax version")
        if state["workers"] != self._workers:
            raise NstjaxError(
                f"data.workers={self._workers} but the checkpoint's data iterator was saved with "
                f"data.workers={state['workers']}: resume with data.workers={state['workers']}"
            )
        self._live().set_state(state["grain"])
        self.skipped = int(state["skipped"])

    def close(self) -> None:
        """Stop reader threads and worker processes now, not at garbage collection (grain's
        clean-up from __del__ at interpreter exit can print spurious errors)."""
        if self._it is not None:
            self._it.close()
            self._it = None


class TrainData:
    """An infinite, shuffled, augmented stream of training batches; iterate to start it."""

    def __init__(self, dataset: grain.IterDataset, source: Any, *, batch_size: int, size: int, workers: int):
        self.dataset = dataset
        self.source = source
        self.num_examples = len(source)
        self.batch_size = batch_size
        self.size = size
        self.workers = workers
        self._last: TrainIterator | None = None
        self.held_out: Subset = Subset(source, [])

    def __iter__(self) -> TrainIterator:
        self._last = TrainIterator(iter(self.dataset), self.workers)
        return self._last

    def validation_images(self, size: int | None = None) -> np.ndarray:
        """The held-out images (`make_dataset(holdout=N)`) as float32 (N, size, size, 3), at
        the training size unless `size` is given: short-side resize + centre crop; unreadable
        ones are left out."""
        size = size or self.size
        images = []
        for i in range(len(self.held_out)):
            item = self.held_out[i]
            try:
                if item.error:
                    raise ValueError(item.error)
                images.append(np.asarray(_center_crop_pil(decode_short_side(item.data, size), size)))
            except Exception as e:  # noqa: BLE001 - one bad image must not end the run
                log.warning("leaving validation image %s out: %s: %s", item.name, type(e).__name__, e)
        if not images:
            raise NstjaxError("data: no readable held-out validation image; set data.val_path to a folder of photos")
        return np.divide(np.stack(images), np.float32(255), dtype=np.float32)

    @property
    def skipped(self) -> int:
        """Unreadable images skipped so far by the most recently created iterator."""
        return self._last.skipped if self._last is not None else 0

    def __repr__(self) -> str:
        return f"TrainData({self.source!r}, batch_size={self.batch_size}, size={self.size})"


class Subset:
    """The items of a source at some indices (the training part, without the held-out ones)."""

    def __init__(self, source: Source, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Encoded:
        return self.source[self.indices[index]]

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, {len(self)} images)"


def holdout_indices(n: int, k: int) -> list[int]:
    """k indices spread evenly over a source of n (fixed: the same for every seed and run)."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


def make_dataset(
    data: DataConfig, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
    holdout: int = 0,
) -> TrainData:
    """Build the training stream described by the `data` config.

    `process_index`/`process_count` give each host of a multi-host run a disjoint share of the
    source. Same config + seed -> the same batches, for any `data.workers` / `data.threads`.
    `holdout` keeps that many images of the source out of training for validation
    (`TrainData.validation_images`), spread evenly over it.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise NstjaxError(f"batch_size must be a positive integer, got {batch_size!r}")
    full = make_source(data)
    held = holdout_indices(len(full), holdout) if holdout else []
    if held and len(full) - len(held) < 1:
        raise NstjaxError(f"data: {len(full)} images cannot give {len(held)} validation images and still train")
    source = Subset(full, sorted(set(range(len(full))) - set(held))) if held else full
    ds = grain.MapDataset.source(source)
    if process_count > 1:
        ds = ds[process_index::process_count]
    ds = ds.seed(int(seed) % 2**32).shuffle().repeat().random_map(DecodeCropFlip(data.size, data.resize))
    buffer = max(data.threads, batch_size * max(data.prefetch, 1))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.threads, prefetch_buffer_size=buffer))
    if data.workers:
        _absl_flags_workaround()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers, per_worker_buffer_size=batch_size))
    what = str(data.path if isinstance(full, FolderSource) else data.tfds_name)
    ds = GoodBatchDataset(ds, batch_size, give_up_after=2 * len(source) + batch_size, what=what)
    out = TrainData(ds, source, batch_size=int(batch_size), size=data.size, workers=data.workers)
    out.held_out = Subset(full, held)
    return out


def _absl_flags_workaround() -> None:
    """grain 0.2.x reads an absl flag in mp_prefetch and raises if flags were never parsed
    (google/grain#1355, fixed upstream by #1362); Hydra programs never parse absl flags."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def load_val_images(path: str | os.PathLike, size: int, limit: int | None = None) -> np.ndarray:
    """Validation photos as float32 (N, size, size, 3) in [0, 1]: short-side resize + centre crop.

    `path` is an image file or a directory (recursive, sorted by name); `limit` keeps the first N.
    Unlike training, a bad validation image is an error: the set is small and chosen by hand.
    """
    if limit is not None and limit < 1:
        raise NstjaxError(f"validation image limit must be >= 1, got {limit}")
    p = Path(path).expanduser()
    files = [p] if p.is_file() else list_images(p, setting="data.val_path")
    images = [_center_crop(load_image(f, what="validation image"), size) for f in files[:limit]]
    return np.stack(images).astype(np.float32, copy=False)


def _center_crop_pil(im: Image.Image, size: int) -> Image.Image:
    x, y = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((x, y, x + size, y + size))


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    img = resize(img, short_side_hw(img.shape[:2], size))
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y : y + size, x : x + size]


__all__ = [
    "SOURCES",
    "FolderSource",
    "TfdsImageSource",
    "TrainData",
    "TrainIterator",
    "list_images",
    "load_val_images",
    "make_dataset",
    "make_source",
    "register_source",
]

