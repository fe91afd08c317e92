#!/usr/bin/env bash
# The GPU recipe (experiment=gpu, bfloat16) for the ten preset styles, each judged at 512 and 1024 px.
#   NSTJAX_ASSETS=/path/to/assets bash benchmarks/train_presets_gpu.sh OUT_DIR [STYLES...]
# Settings (environment):
#   STEPS     training steps per style (default 40000, the recipe)
#   JOBS      styles trained at once on the one GPU (default 1); each process gets 1/JOBS of its memory
#   BUDGET_S  wall seconds per style, compile included (default: none, train to STEPS); a style
#             stopped by it keeps the checkpoint SIGTERM saves, and is judged at the step it reached
#   THREADS   data-loading threads per process (default 8 / JOBS, at least 2)
#   VGG       VGG-19 weights file for training and judging (default: the assets' / nstjax.assets')
#   EXTRA     more overrides for the training commands
#   EVAL_SIZES  long sides judged (default [512,1024])
#   PYTHON    the interpreter (default python3)
# Writes OUT_DIR/presets.json (per style: steps reached, wall seconds, nstjax.evaluate on the Kodak
# photos at 512 and 1024 px) and OUT_DIR/presets_chicago.tar (each network on chicago.jpg at 512 px).
set -uo pipefail
out=${1:?usage: train_presets_gpu.sh OUT_DIR [STYLES...]}
shift
styles=("$@")
[ ${#styles[@]} -gt 0 ] || styles=(mosaic candy udnie rain_princess starry_night the_scream wave la_muse feathers composition_vii)
py=${PYTHON:-python3}
steps=${STEPS:-40000}
jobs=${JOBS:-1}
threads=${THREADS:-$(( 8 / jobs > 2 ? 8 / jobs : 2 ))}
vgg=(${VGG:+vgg.weights=$VGG})
extra=("${vgg[@]}" ${EXTRA:-})
work=$(mktemp -d)
mkdir -p "$out" "$work/runs"
log() { echo "[presets $(date +%T)] $*"; }

# A 2-step run of the first style compiles the train step into the persistent compilation cache;
# every style loads it from there (the style targets are inputs of the step, not constants).
t0=$(date +%s)
$py -m nstjax.train experiment=gpu style="${styles[0]}" data=folder wandb=disabled train.steps=2 train.resume=false \
    train.val_sizes=[] run_name=gpu_warmup hydra.run.dir="$work/runs/gpu_warmup" "${extra[@]}" \
    > "$work/warmup.log" 2>&1 || { log "warm-up failed:"; tail -20 "$work/warmup.log"; }
log "warm-up (compiling into the cache) took $(( $(date +%s) - t0 )) s"

train_one() {  # style -> runs/gpu_<style>; records its wall seconds
  local s=$1 start
  start=$(date +%s)
  local cmd=($py -m nstjax.train experiment=gpu style="$s" data=folder wandb=disabled train.steps="$steps"
             train.resume=false train.sample_every=0 data.threads="$threads" run_name=gpu_"$s"
             hydra.run.dir="$work/runs/gpu_$s" "${extra[@]}")
  if [ -n "${BUDGET_S:-}" ]; then
    timeout -s TERM --kill-after=120 "$BUDGET_S" "${cmd[@]}" > "$work/train_$s.log" 2>&1
  else
    "${cmd[@]}" > "$work/train_$s.log" 2>&1
  fi
  echo "$? $(( $(date +%s) - start ))" > "$work/train_$s.status"
}

export XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk "BEGIN {printf \"%.2f\", 0.9 / $jobs}")
for ((i = 0; i < ${#styles[@]}; i += jobs)); do
  wave=("${styles[@]:i:jobs}")
  log "training ${wave[*]} (STEPS=$steps, BUDGET_S=${BUDGET_S:-none}, $jobs at once, $threads data threads each)"
  for s in "${wave[@]}"; do train_one "$s" & done
  wait
done

chicago="$NSTJAX_ASSETS/data/content/chicago.jpg"
judge_one() {  # float16 artifact -> nstjax.evaluate at EVAL_SIZES on the Kodak photos, chicago.jpg at 512 px
  local s=$1
  $py -m nstjax.export checkpoint="$work/runs/gpu_$s/checkpoints" output="$work/$s.nstjax.npz" params_dtype=float16 \
      > "$work/export_$s.log" 2>&1 \
    && $py -m nstjax.evaluate model_path="$work/$s.nstjax.npz" sizes="${EVAL_SIZES:-[512,1024]}" output="$work/eval_$s.json" \
         "${vgg[@]}" > "$work/eval_$s.log" 2>&1 \
    && $py -m nstjax.infer model_path="$work/$s.nstjax.npz" input="$chicago" output="$work/chicago_$s.jpg" size=512 \
         > "$work/infer_$s.log" 2>&1 \
    || log "$s: export/evaluate/infer failed (its logs are in presets.json)"
}
# The first judge compiles into the cache; the others then run $jobs at once.
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk "BEGIN {printf \"%.2f\", 0.9 / $jobs}")
judge_one "${styles[0]}"
log "${styles[0]} judged"
rest=("${styles[@]:1}")
for ((i = 0; i < ${#rest[@]}; i += jobs)); do
  for s in "${rest[@]:i:jobs}"; do judge_one "$s" & done
  wait
done
log "all judged"

$py - "$out/presets.json" "$work" "$steps" "$jobs" "${BUDGET_S:-}" "${styles[@]}" <<'PY'
import json, re, sys
from pathlib import Path
out, work, steps, jobs, budget, *styles = sys.argv[1:]
work = Path(work)
def read(p):
    p = work / p
    return json.loads(p.read_text()) if p.is_file() else None
def tail(p, n=15):
    p = work / p
    return p.read_text(errors="replace").splitlines()[-n:] if p.is_file() else None
result = {"steps": int(steps), "jobs": int(jobs), "budget_s": int(budget) if budget else None, "styles": {}}
for s in styles:
    status = (work / f"train_{s}.status").read_text().split() if (work / f"train_{s}.status").is_file() else [None, None]
    ck = work / "runs" / f"gpu_{s}" / "checkpoints"
    reached = max((int(c.name) for c in ck.iterdir() if c.name.isdigit()), default=0) if ck.is_dir() else 0
    result["styles"][s] = {"exit": status[0], "wall_s": int(status[1]) if status[1] else None, "steps_reached": reached,
                           "summary": read(f"runs/gpu_{s}/summary.json"), "evaluate": read(f"eval_{s}.json"),
                           "artifact_bytes": (work / f"{s}.nstjax.npz").stat().st_size if (work / f"{s}.nstjax.npz").is_file() else None,
                           "train_log": tail(f"train_{s}.log"), "eval_log": tail(f"eval_{s}.log", 5)}
    rates = re.findall(r"img_s=([0-9.]+)", (work / f"train_{s}.log").read_text(errors="replace")) if (work / f"train_{s}.log").is_file() else []
    result["styles"][s]["last_images_per_s"] = float(rates[-1]) if rates else None
result["warmup_log"] = tail("warmup.log")
Path(out).write_text(json.dumps(result, indent=1))
PY
tar -cf "$out/presets_chicago.tar" -C "$work" $(cd "$work" && ls chicago_*.jpg 2>/dev/null)
log "done: $out/presets.json"
