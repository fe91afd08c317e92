"""CLI: Gatys style transfer of one photo.

    python -m nstjax.stylize content.image=photo.jpg style=mosaic output=out.png
    python -m nstjax.stylize style.image=[a.jpg,b.jpg] style.blend_weights=[0.7,0.3] size=1024 pyramid=[256,512]
    python -m nstjax.stylize -m loss.style_weight=1e2,1e3      # Hydra multirun sweep
"""
from __future__ import annotations

from pathlib import Path

from nstjax.cli import entry_point
from nstjax.config import StylizeConfig


@entry_point("stylize", StylizeConfig)
def main(cfg: StylizeConfig, run_dir: Path) -> None:
    from nstjax.gatys.job import run_stylize

    report = run_stylize(cfg, run_dir=run_dir)
    f = report["final"]
    print(f"wrote {report['output']} ({report['size'][0]}x{report['size'][1]}, {report['steps']} steps, "
          f"{report['seconds']:.1f} s): " + ", ".join(f"{k} {v:.4g}" for k, v in f.items()))


if __name__ == "__main__":
    main()
