"""W&B logging behind a small facade, so training code never branches on whether it is on.

Offline by default (nothing waits on a network); the WANDB_MODE environment variable wins.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nstjax.config import WandbConfig


class Tracker:
    def __init__(self, cfg: WandbConfig, *, job: str, run_dir: str | Path, config: dict | None = None,
                 run_id: str | None = None, enabled: bool = True):
        """`run_id` continues that W&B run (a resumed training run logs onto the same curves);
        `enabled=False` logs nothing (the other processes of a multi-process run)."""
        mode = os.environ.get("WANDB_MODE") or cfg.mode
        self.enabled = enabled and mode != "disabled"
        self.run = None
        self.run_id = run_id
        if not self.enabled:
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb  # imported lazily: it is slow to import and unused when disabled

        self._wandb = wandb
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group,
                              tags=list(cfg.tags), job_type=job, id=run_id, resume="allow" if run_id else None,
                              dir=str(run_dir), config=config, mode=mode, reinit="finish_previous")
        self.run_id = self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        """images: name -> (H, W, 3) float in [0, 1]."""
        if self.run is not None:
            from nstjax.image import to_uint8

            self.run.log({k: self._wandb.Image(to_uint8(v)) for k, v in images.items()}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
