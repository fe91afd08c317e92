"""CLI: judge a trained network at the sizes users run it, optionally against Gatys.

    python -m nstjax.evaluate model_path=runs/mosaic/checkpoints                  # its own style and loss
    python -m nstjax.evaluate model_path=mosaic.pth style=mosaic sizes=[512,1024]  # pytorch/examples weights
    python -m nstjax.evaluate model_path=m.nstjax.npz data.path=photos/ gatys_steps=200 images=eval/

For every long side in `sizes`, each photo (a centred square, or its own aspect with
square=false) goes through the network, and the output is judged by the perceptual loss with
style targets from the style image at that size: style and content losses, the photos' own
style loss, and how well the edges of the scene survive. `gatys_steps` adds Gatys on the same
photos and loss: what the loss can reach.
"""
from __future__ import annotations

from pathlib import Path

from nstjax.cli import entry_point
from nstjax.config import EvaluateConfig


@entry_point("evaluate", EvaluateConfig)
def main(cfg: EvaluateConfig, run_dir: Path) -> None:
    from nstjax.evaluation.job import report_table, run_evaluate

    report = run_evaluate(cfg)
    print(report_table(report))
    if cfg.output:
        print(f"wrote {cfg.output}")


if __name__ == "__main__":
    main()
