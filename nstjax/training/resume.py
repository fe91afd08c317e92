"""What a resumed run may change: the settings of its checkpoint against the command's."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nstjax.errors import NstjaxError

#: Settings that define what is being trained; a checkpoint cannot continue under others.
BREAKING = ("model.", "style.image", "style.blend_weights", "loss.", "vgg.", "data.name", "data.path",
            "data.tfds_name", "data.split", "train.seed")


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _norm(key: str, value: Any) -> Any:
    if key == "style.image" and isinstance(value, str):  # a single image was stored as a string
        return [value]
    if isinstance(value, tuple):
        return list(value)
    return value


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, this run's value) for every setting that differs."""
    a, b = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = _norm(key, a.get(key)), _norm(key, b.get(key))
        if key in a and key in b and va != vb:
            changes.append((key, va, vb))
    return changes


def is_breaking(key: str) -> bool:
    return any(key == b or (b.endswith(".") and key.startswith(b)) for b in BREAKING)


def check_resume(old: Mapping[str, Any], new: Mapping[str, Any], where: str) -> list[str]:
    """Refuse (one line) a resume whose changes break the run; return the harmless ones, shown."""
    changes = config_changes(old, new)
    breaking = [c for c in changes if is_breaking(c[0])]
    if breaking:
        key, was, now = breaking[0]
        more = f" (and {len(breaking) - 1} more: {', '.join(k for k, _, _ in breaking[1:4])})" if len(breaking) > 1 else ""
        raise NstjaxError(f"cannot resume from {where}: it was trained with {key}={was!r}, this command asks for "
                          f"{now!r}{more}; give this run its own run_name=... (or train.ckpt_dir=...)")
    return [f"{k}: {was!r} -> {now!r}" for k, was, now in changes]
