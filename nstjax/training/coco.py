"""Prepare MS-COCO 2017 images as the TFDS array_record dataset that `data=coco` reads.

No TensorFlow is needed: the official zips (checksums as TFDS pins them) are read as they
are, without unpacking, and written as `coco/2017` with an `image` feature (the encoded JPEG
bytes, as the official TFDS build stores them), plus `image/id` and `image/filename`.
"""
from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

import numpy as np

from nstjax import assets
from nstjax.errors import NstjaxError

log = logging.getLogger(__name__)

# split -> (url, sha256 as pinned in tensorflow_datasets/url_checksums/coco.txt, folder inside the zip)
ARCHIVES = {
    "train": ("http://images.cocodataset.org/zips/train2017.zip",
              "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929", "train2017/"),
    "validation": ("http://images.cocodataset.org/zips/val2017.zip",
                   "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05", "val2017/"),
}
VERSION = "1.1.0"  # the official TFDS coco/2017 version: the same reader opens either


def download_archive(split: str, cache: Path) -> Path:
    url, sha256, _ = ARCHIVES[split]
    dest = cache / Path(url).name
    if dest.is_file() and assets.sha256_of(dest) == sha256:
        return dest
    log.warning("downloading %s to %s (verified by sha256)", url, dest)
    try:
        assets.download(url, dest, sha256)
    except Exception as e:  # noqa: BLE001 - network, disk, checksum: one line
        raise NstjaxError(f"could not download {url} ({e}); download it yourself and pass --archive "
                          f"{split}=PATH") from None
    return dest


def _members(archive: Path, split: str) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.lower().endswith((".jpg", ".jpeg")) and not n.endswith("/")]
    except (OSError, zipfile.BadZipFile) as e:
        raise NstjaxError(f"--archive {split}={archive}: not a readable zip ({e})") from None
    if not names:
        raise NstjaxError(f"--archive {split}={archive}: no .jpg images in it (expected COCO's {ARCHIVES[split][2]})")
    return sorted(names)


def prepare(data_dir: str | Path, archives: dict[str, Path], limit: int | None = None) -> Path:
    """Write `coco/2017` (array_record) into `data_dir` from the given split -> zip archives."""
    import tensorflow_datasets as tfds

    members = {split: _members(Path(a), split)[:limit] for split, a in archives.items()}

    class Coco(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2017")]

        def _info(self):
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "image/id": np.int64,
            })
            return tfds.core.DatasetInfo(builder=self, features=features,
                                         homepage="https://cocodataset.org", description="MS-COCO 2017 images")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(Path(archives[split]), members[split]) for split in archives}

        def _generate_examples(self, archive: Path, names: list[str]):
            with zipfile.ZipFile(archive) as z:
                for name in names:
                    digits = re.findall(r"\d+", Path(name).stem)
                    yield name, {"image": z.read(name), "image/filename": Path(name).name,
                                 "image/id": int(digits[-1]) if digits else -1}

    builder = Coco(data_dir=str(Path(data_dir).expanduser()), file_format="array_record")
    builder.download_and_prepare()
    return Path(builder.data_dir)
