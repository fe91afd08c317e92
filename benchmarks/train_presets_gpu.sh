#!/usr/bin/env bash
# The GPU recipe for the ten preset styles, then each network judged at 512 and 1024 px.
#   NSTJAX_ASSETS=/path/to/assets bash benchmarks/train_presets_gpu.sh OUT_DIR [STEPS] [STYLES...]
# Trains `experiment=gpu` (bfloat16) on the assets' photos, exports float16 artifacts, and writes
# OUT_DIR/<style>.json (summary + nstjax.evaluate on the Kodak validation photos).
set -euo pipefail
out=${1:?usage: train_presets_gpu.sh OUT_DIR [STEPS] [STYLES...]}
steps=${2:-40000}
shift $(( $# > 1 ? 2 : 1 ))
styles=("$@")
[ ${#styles[@]} -gt 0 ] || styles=(mosaic candy udnie rain_princess starry_night the_scream wave la_muse feathers composition_vii)
py=${PYTHON:-python3}
mkdir -p "$out"
for s in "${styles[@]}"; do
  start=$(date +%s)
  $py -m nstjax.train experiment=gpu style=$s data=folder wandb=disabled train.steps=$steps \
      train.resume=false run_name=gpu_$s
  secs=$(( $(date +%s) - start ))
  $py -m nstjax.export checkpoint=runs/gpu_$s/checkpoints output="$out/$s.nstjax.npz" params_dtype=float16
  $py -m nstjax.evaluate model_path="$out/$s.nstjax.npz" data.path="$NSTJAX_ASSETS/data/photos/val" \
      sizes=[512,1024] output="$out/${s}_eval.json"
  $py - "$out/$s.json" "runs/gpu_$s/summary.json" "$out/${s}_eval.json" "$secs" <<'PY'
import json, sys
out, summary, evaluation, secs = sys.argv[1:]
json.dump({"summary": json.load(open(summary)), "evaluate": json.load(open(evaluation)),
           "wall_seconds": int(secs)}, open(out, "w"), indent=1)
PY
done
