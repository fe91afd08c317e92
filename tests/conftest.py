"""Shared fixtures: the real assets directory (../shared in CI, or $NSTJAX_ASSETS), the real VGG-19
and its images at any size."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# The suite is a CPU suite (CI has no GPU). On a GPU machine JAX would pick the GPU, where the
# 2-device data-parallel test has one device and XLA's autotuning warnings reach the CLIs'
# stderr; pinning CPU here (inherited by the CLI subprocesses) keeps the results the same.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite compiles far more than it runs (small images, a few steps, a fresh process per CLI
# test), so XLA's backend skips its costly LLVM optimizations: the compile-bound tests run faster
# and the 8K tiling tests no slower (measured when this was set). The CLI subprocesses inherit it;
# the programs compute the same results, only their machine code is less tuned.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


def assets_dir() -> Path:
    env = os.environ.get("NSTJAX_ASSETS")
    d = Path(env) if env else ROOT.parent / "shared"
    if not (d / "weights").is_dir():
        raise RuntimeError(f"assets directory {d} not found: set NSTJAX_ASSETS to the shared assets")
    return d


@pytest.fixture(scope="session")
def assets() -> Path:
    return assets_dir()


@pytest.fixture(scope="session")
def photos(assets: Path) -> Path:
    return assets / "data" / "photos"


@pytest.fixture(scope="session")
def vgg(assets: Path):
    """The real ImageNet VGG-19, loaded once for the whole suite (its params are never mutated)."""
    from nstjax.vgg import load_vgg19
    return load_vgg19(assets_dir=str(assets))


@pytest.fixture(scope="session")
def image(assets: Path) -> Callable[[str, int], np.ndarray]:
    """image("content/chicago.jpg", 128): an asset under data/, long side resized, cached."""
    from nstjax.image import load_resized

    @functools.cache
    def load(rel: str, size: int) -> np.ndarray:
        out = load_resized(assets / "data" / rel, size)
        out.flags.writeable = False  # shared between tests: a test that writes into it fails loudly
        return out
    return load


# `make test` runs the modules on two workers (pytest-xdist, a module per worker: their fixtures are
# built once). The modules whose tests start training runs in subprocesses take most of the time:
# handed out first, the short modules then even out the workers' ends.
SLOW_FIRST = ("test_evaluate", "test_adain", "test_train_resume", "test_faults", "test_train", "test_distributed",
              "test_export_infer", "test_stylize_cli", "test_gatys", "test_multi_style")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)
    items.sort(key=rank)  # stable: each module keeps its own order
