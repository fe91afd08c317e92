"""CLI: train a feed-forward style network on every local device, resumable.

    python -m nstjax.train style=mosaic                         # COCO via TFDS (data=coco)
    python -m nstjax.train experiment=cpu_quick style=candy     # bundled photos, small, CPU
    python -m nstjax.train style=udnie data=folder data.path=~/photos model.dtype=bfloat16
    python -m nstjax.train -m experiment=sweep_style_weight     # Hydra multirun sweep
Re-running the same command resumes from the last checkpoint; `train.resume=false` starts over.
"""
from __future__ import annotations

from pathlib import Path

from nstjax.cli import entry_point
from nstjax.config import TrainConfig


@entry_point("train", TrainConfig)
def main(cfg: TrainConfig, run_dir: Path) -> None:
    from nstjax.training.loop import report_line, run_train

    s = run_train(cfg, run_dir)
    if s:
        at = report_line({int(k): v for k, v in s["val_at"].items()})
        print(f"done at step {s['step']}: on the {cfg.data.size} px training crops: val content {s['val']['content']:.4g}, "
              f"style {s['val']['style']:.4g} (photos' own style loss {s['val_photo_style_loss']:.4g}, "
              f"{s['style_loss_reduction']:.1f}x lower)" + (f"; {at}" if at else ""))


if __name__ == "__main__":
    main()
