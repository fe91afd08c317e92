#!/usr/bin/env bash
# The GPU parts of the open issues in one device call (benchmarks/gpu/README.md), from the repo root:
#   bash benchmarks/gpu/session.sh OUT [infer] [presets]          (default: both)
# Needs the bundle of benchmarks/gpu/stage.py in .gpu/ (carried: .gpu). Each part writes its JSON
# to OUT even when another fails; everything is logged to OUT/session.log. DEADLINE_S (570) is
# the wall time the whole call must end within: the presets' per-style budget is what is left.
set -uo pipefail
out=${1:?usage: session.sh OUT [infer] [presets]}
shift
parts=${*:-infer presets}
g=${GPU_BUNDLE:-.gpu}
py=${PYTHON:-python3}
t_start=$(date +%s)
mkdir -p "$out"
log() { echo "[session $(date +%T)] $*"; }

session() {
  log "start: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no nvidia-smi)"
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$g"/whl/*.whl \
    || { log "wheel install failed"; return 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  [ -e nstjax/conf ] || ln -s ../conf nstjax/conf   # nstjax.conf, as the wheel maps conf/ (pyproject.toml)
  export NSTJAX_ASSETS=$PWD/$g/assets WANDB_MODE=disabled PYTHONUNBUFFERED=1
  export NSTJAX_COMPILATION_CACHE=${NSTJAX_COMPILATION_CACHE:-/tmp/nstjax-jax-cache}
  local vgg=/tmp/vgg19_conv1_1-conv5_1.h5
  $py benchmarks/gpu/stage.py --unpack-vgg "$g/assets/weights/vgg19_conv1_1-conv5_1.f16.npz" "$vgg" || log "VGG unpack failed"
  $py -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__)"
  for part in $parts; do
    local t0 left
    t0=$(date +%s)
    case $part in
      infer)  # issue #11: frames/s at 1080p, float32 and bfloat16, batch 1 and 8, vs PyTorch on this GPU
        $py benchmarks/bench_infer.py --torch-python "$py" --torch-device "${TORCH_DEVICE:-cuda}" \
            --sizes ${INFER_SIZES:-1920x1080} --batches 1 8 --dtypes float32 bfloat16 \
            --repeats "${INFER_REPEATS:-30}" --rounds 1 --video-frames 0 --out "$out/infer_gpu.json" ;;
      presets)  # issue #13: the GPU recipe for the ten presets, judged at 512 and 1024 px
        left=$(( ${DEADLINE_S:-570} - ($(date +%s) - t_start) - ${RESERVE_S:-210} ))  # warm-up + judging
        (( left >= 60 )) || { log "presets: only $left s left for training; skipped"; continue; }
        log "presets: $left s of training per style"
        STEPS=${STEPS:-40000} JOBS=${JOBS:-10} BUDGET_S=${BUDGET_S:-$left} VGG=$vgg \
            bash benchmarks/train_presets_gpu.sh "$out" ${PRESETS:-} ;;
      *) log "unknown part $part" ;;
    esac
    log "$part: exit $?, $(( $(date +%s) - t0 )) s"
  done
  log "end after $(( $(date +%s) - t_start )) s"
}

session 2>&1 | tee "$out/session.log"
