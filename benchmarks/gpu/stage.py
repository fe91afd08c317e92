"""Stage what a GPU session carries to the device machine, which has no network and no ../shared.

    .venv/bin/python benchmarks/gpu/stage.py                 # -> .gpu/ (git-excluded), for the device's Python 3.12
    .venv/bin/python benchmarks/gpu/stage.py --python-version 3.11 --out /tmp/gpu-sim   # a CPU dry run here
    python3 benchmarks/gpu/stage.py --unpack-vgg NPZ H5      # there (session.sh): the HDF5 nstjax reads

One `run` call carries at most 64 MiB (benchmarks/gpu/README.md), so the bundle is sized to it:
- whl/: the wheels the device image lacks (hydra-core, omegaconf, antlr4, grain, array-record,
  portpicker), downloaded from the package index for that Python;
- assets/data: the style and content images, the Kodak validation photos and an even sample of
  the training photos, by byte budget (`--photo-mb`);
- assets/weights/vgg19_conv1_1-conv5_1.f16.npz: VGG-19's convolutions up to conv5_1 (every layer
  the recipes read: relu1_1..relu5_1) in float16, half the size of float32; `session.sh` writes it
  back as a Keras-layout HDF5 with conv5_2..conv5_4 zeroed, which no recipe reads.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ["hydra-core==1.3.8", "omegaconf==2.3.1", "grain==0.2.18", "array-record==0.8.6", "portpicker==1.6.0"]
SDIST_ONLY = ["antlr4-python3-runtime==4.9.3"]  # pure Python, published as a source archive only: built here
VGG_LAYERS = [f"block{b}_conv{c}" for b, n in enumerate((2, 2, 4, 4), 1) for c in range(1, n + 1)] + ["block5_conv1"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def wheels(dest: Path, python_version: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                    "--implementation", "cp", *plat, "-d", str(dest), *WHEELS], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), *SDIST_ONLY], check=True)


def vgg(h5: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    with h5py.File(h5, "r") as f:
        for name in VGG_LAYERS:
            arrays[f"{name}_W"] = np.asarray(f[name][f"{name}_W_1:0"]).astype(np.float16)
            arrays[f"{name}_b"] = np.asarray(f[name][f"{name}_b_1:0"]).astype(np.float32)
    np.savez(dest, **arrays)


def unpack_vgg(npz: Path, h5: Path) -> None:
    """The staged float16 layers -> a Keras-layout VGG-19 notop HDF5 (float32), conv5_2..conv5_4 zero."""
    shapes = {"block5_conv2": (3, 3, 512, 512), "block5_conv3": (3, 3, 512, 512), "block5_conv4": (3, 3, 512, 512)}
    with np.load(npz) as z, h5py.File(h5, "w") as f:
        for name in VGG_LAYERS + list(shapes):
            w = z[f"{name}_W"].astype(np.float32) if name in VGG_LAYERS else np.zeros(shapes[name], np.float32)
            b = z[f"{name}_b"] if name in VGG_LAYERS else np.zeros(shapes[name][-1], np.float32)
            g = f.create_group(name)
            g[f"{name}_W_1:0"], g[f"{name}_b_1:0"] = w, b


def assets(shared: Path, dest: Path, photo_mb: float) -> int:
    data = dest / "data"
    for sub in ("styles", "content", "photos/val"):
        shutil.copytree(shared / "data" / sub, data / sub, dirs_exist_ok=True)
    photos = sorted((shared / "data" / "photos" / "train").glob("*.jpg"))
    mean = sum(p.stat().st_size for p in photos) / len(photos)
    n = min(len(photos), int(photo_mb * 2**20 / mean))
    train = data / "photos" / "train"
    train.mkdir(parents=True, exist_ok=True)
    for i in np.linspace(0, len(photos) - 1, n).round().astype(int):  # evenly across the sources
        shutil.copy2(photos[i], train / photos[i].name)
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / ".gpu"))
    p.add_argument("--python-version", default="3.12", help="the device's Python (KINDS.md)")
    p.add_argument("--photo-mb", type=float, default=24.0, help="training photos to carry, MB")
    p.add_argument("--assets", default=os.environ.get("NSTJAX_ASSETS", str(ROOT.parent / "shared")))
    p.add_argument("--unpack-vgg", nargs=2, metavar=("NPZ", "H5"))
    args = p.parse_args()
    if args.unpack_vgg:
        unpack_vgg(*map(Path, args.unpack_vgg))
        return
    out, shared = Path(args.out), Path(args.assets)
    if out.exists():
        shutil.rmtree(out)
    wheels(out / "whl", args.python_version)
    vgg(shared / "weights" / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        out / "assets" / "weights" / "vgg19_conv1_1-conv5_1.f16.npz")
    n = assets(shared, out / "assets", args.photo_mb)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    repo = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
    bundle = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {n} training photos; bundle {bundle / 2**20:.1f} MiB + tracked files {repo / 2**20:.1f} MiB "
          f"= {(bundle + repo) / 2**20:.1f} MiB of the 64 MiB a call carries")


if __name__ == "__main__":
    main()
