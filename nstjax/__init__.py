"""nstjax: neural style transfer in JAX/Flax: Gatys optimization and feed-forward networks."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_stylizer"]


def __getattr__(name: str) -> Any:  # lazy: `import nstjax` stays cheap for the CLIs
    if name == "load_stylizer":
        from nstjax.serving.loading import load_stylizer

        return load_stylizer
    raise AttributeError(f"module 'nstjax' has no attribute {name!r}")
