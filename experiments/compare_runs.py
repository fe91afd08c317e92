"""Compare the runs of a Hydra multirun sweep (or any folder of runs) side by side.

    python experiments/compare_runs.py multirun/sweep_mosaic [--sort val_style]
Reads each run's summary.json (nstjax.train) and .hydra/overrides.yaml, prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def collect(root: Path) -> list[dict]:
    rows = []
    for summary in sorted(root.rglob("summary.json")):
        run = summary.parent
        s = json.loads(summary.read_text())
        ov = run / ".hydra" / "overrides.yaml"
        overrides = " ".join(line.strip("- \n") for line in ov.read_text().splitlines()) if ov.exists() else ""
        rows.append({"run": str(run.relative_to(root)) or ".", "overrides": overrides, "step": s["step"],
                     "val_content": s["val"]["content"], "val_style": s["val"]["style"],
                     "val_total": s["val"]["total"], "style_reduction": s["style_loss_reduction"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", type=Path)
    ap.add_argument("--sort", default="run", choices=["run", "val_content", "val_style", "val_total", "style_reduction"])
    args = ap.parse_args()
    rows = sorted(collect(args.root), key=lambda r: r[args.sort])
    if not rows:
        raise SystemExit(f"no summary.json under {args.root}")
    print("| run | overrides | step | val content | val style | style loss vs photos |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['overrides']} | {r['step']} | {r['val_content']:.4g} | {r['val_style']:.4g} "
              f"| {r['style_reduction']:.1f}x lower |")


if __name__ == "__main__":
    main()
