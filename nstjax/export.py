"""CLI: export a trained network as a self-contained inference artifact.

    python -m nstjax.export checkpoint=runs/mosaic/checkpoints output=mosaic.nstjax.npz
    python -m nstjax.export checkpoint=runs/mosaic/checkpoints step=20000 output=m.npz format=stablehlo
    python -m nstjax.export checkpoint=mosaic.nstjax.npz output=m.hlo.npz format=stablehlo platforms=[cpu,cuda]
    python -m nstjax.export checkpoint=runs/mosaic/checkpoints output=mosaic.onnx format=onnx   # nstjax[onnx]
    python -m nstjax.export checkpoint=runs/presets/checkpoints output=candy.onnx format=onnx model_style=candy

Formats are registered in `nstjax.serving.formats`; the file layout is `nstjax.serving.artifact`
(format=onnx writes a standalone .onnx file instead: `nstjax.serving.onnx_model`).
"""
from __future__ import annotations

from pathlib import Path

from nstjax.cli import entry_point
from nstjax.config import ExportConfig


@entry_point("export", ExportConfig)
def main(cfg: ExportConfig, run_dir: Path) -> None:
    from nstjax.serving.exporting import export_model

    meta = export_model(cfg.checkpoint, cfg.output, step=cfg.step, kind=cfg.format, platforms=cfg.platforms,
                        params_dtype=cfg.params_dtype, model_style=cfg.model_style)
    size = Path(cfg.output).stat().st_size
    extra = ""
    if "stablehlo" in meta:
        extra = f" for {','.join(meta['stablehlo']['platforms'])}, symbolic batch/height/width"
    if "onnx" in meta:
        extra = f" opset {meta['onnx']['opset']}, dynamic batch/height/width, sides >= {meta['onnx']['min_side']} px"
    m = meta["model"]
    shape = ", ".join(f"{k} {v}" for k, v in m.items() if k != "name" and v is not None)
    if meta["source"].get("model_style"):
        shape += f"; style {meta['source']['model_style']}"
    print(f"wrote {cfg.output} ({size / 1e6:.1f} MB, {meta['kind']}{extra}): {m.get('name')} ({shape}), "
          f"{meta['num_params']:,} params, step {meta['source'].get('step')}")


if __name__ == "__main__":
    main()
