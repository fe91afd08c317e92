"""Shared fixtures: the real assets directory (../shared in CI, or $NSTJAX_ASSETS)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The suite is a CPU suite (CI has no GPU). On a GPU machine JAX would pick the GPU, where the
# 2-device data-parallel test has one device and XLA's autotuning warnings reach the CLIs'
# stderr; pinning CPU here (inherited by the CLI subprocesses) keeps the results the same.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


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
