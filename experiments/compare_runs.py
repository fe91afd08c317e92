"""Compare the runs of a Hydra multirun sweep (or any folder of runs) side by side.

    python experiments/compare_runs.py multirun/sweep_mosaic [--size 512] [--sort style_reduction]
Reads each run's summary.json (nstjax.train) and .hydra/overrides.yaml and prints a markdown
table: the validation losses on the training crops and, at `--size` (one of the run's
`train.val_sizes`), the full-size outputs' style and content losses, how far below the photos'
own style loss they are, the palette (colour distance to the style's, beside the photos' own),
and the edge correlation with their own photo and with another one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SORT_KEYS = ("run", "style_reduction", "style", "content", "palette", "edge_corr_own", "minutes")


def collect(root: Path, size: str) -> list[dict]:
    rows = []
    for summary in sorted(root.rglob("summary.json")):
        run = summary.parent
        s = json.loads(summary.read_text())
        ov = run / ".hydra" / "overrides.yaml"
        overrides = " ".join(line.strip("- \n") for line in ov.read_text().splitlines()) if ov.exists() else ""
        at = (s.get("val_at") or {}).get(size)
        if at is None:
            print(f"note: {run} has no validation at {size} px (train.val_sizes); skipped")
            continue
        rows.append({"run": str(run.relative_to(root)) or ".", "overrides": overrides, "step": s["step"],
                     "crop_style_reduction": s["style_loss_reduction"], "minutes": s["train_seconds"] / 60,
                     **{k: at[k] for k in ("style", "content", "photo_style", "style_loss_reduction",
                                           "edge_corr_own", "edge_corr_other")},
                     "palette": at.get("palette", float("nan")), "photo_palette": at.get("photo_palette", float("nan"))})
        rows[-1]["style_reduction"] = rows[-1].pop("style_loss_reduction")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", default="512", help="validation long side to compare at (default 512)")
    ap.add_argument("--sort", default="run", choices=SORT_KEYS)
    args = ap.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"compare_runs: {args.root} is not a directory")
    rows = collect(args.root, str(args.size))
    if not rows:
        raise SystemExit(f"compare_runs: no summary.json with validation at {args.size} px under {args.root}")
    reverse = args.sort in ("style_reduction", "edge_corr_own")
    rows.sort(key=lambda r: r[args.sort], reverse=reverse)
    print(f"| run | overrides | steps | minutes | crops: style vs photos | {args.size} px: style | vs photos' "
          f"| content | palette (photos') | edges own / other |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['overrides']} | {r['step']} | {r['minutes']:.1f} | {r['crop_style_reduction']:.1f}x lower "
              f"| {r['style']:.4g} | {r['style_reduction']:.1f}x lower | {r['content']:.4g} "
              f"| {r['palette']:.4g} ({r['photo_palette']:.4g}) "
              f"| {r['edge_corr_own']:.2f} / {r['edge_corr_other']:.2f} |")


if __name__ == "__main__":
    main()
