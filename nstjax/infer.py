"""CLI: fast stylization with a trained feed-forward network.

    python -m nstjax.infer model_path=mosaic.nstjax.npz input=photo.jpg output=out.jpg
    python -m nstjax.infer model_path=runs/mosaic/checkpoints input=photos/ output=styled/ size=512
    python -m nstjax.infer model_path=mosaic.nstjax.npz input=clip.gif output=clip_mosaic.gif batch=8
    python -m nstjax.infer model_path=mosaic.nstjax.npz input=frames/ output=anim.gif fps=12
    python -m nstjax.infer model_path=mosaic.nstjax.npz input=clip.mp4 output=out.mp4 start=10 duration=5  # nstjax[video]

(`model_path`, not `model`: `model` is a config group of the training config.) The network is
compiled once per input shape; frames of one animation share one executable (the last partial
batch is padded with copies of its last frame; instance norm is per image, so that changes
nothing). The report line gives the network time per image after compilation.
"""
from __future__ import annotations

from pathlib import Path

from nstjax.cli import entry_point
from nstjax.config import InferConfig


def _tile_note(size: str, t: dict) -> str:
    what = "the whole image" if t["tile"] is None else f"{t['tile']} px tiles"
    return f"; tile=auto at {size}: {what} ({t['network_mb']:.0f} MB of a {t['budget_mb']:.0f} MB budget)"


@entry_point("infer", InferConfig)
def main(cfg: InferConfig, run_dir: Path) -> None:
    from nstjax.serving.job import run_infer

    r = run_infer(cfg)
    what = r["written"][0] if len(r["written"]) == 1 else f"{len(r['written'])} files to {r['output']}"
    shapes = ", ".join("x".join(str(d) for d in s[1:3]) for s in r["shapes"])
    print(f"wrote {what}: {r['images']} image(s) at {shapes}, {r['ms_per_image']:.1f} ms/image after "
          f"{r['compile_seconds']:.2f} s compile ({r['compiles']} shape(s), batch {r['batch']}, "
          f"{r['backend']} {r['model'].get('dtype', 'float32')}, {r['device']})"
          + (f"; skipped {r['skipped']} unreadable input(s)" if r["skipped"] else "")
          + (f"; {r['existing']} existing output(s) kept (overwrite=true redoes them)" if r["existing"] else "")
          + "".join(_tile_note(size, t) for size, t in (r.get("tiles") or {}).items()))
    longest = max((max(s[1:3]) for s in r["shapes"]), default=0)
    if r.get("made_for") and longest > 1.5 * r["made_for"] and cfg.net_size is None:
        print(f"note: this network was made for {r['made_for']} px outputs; its strokes look smaller at {longest} px "
              f"(net_size={r['made_for']} runs it at its scale)")


if __name__ == "__main__":
    main()
