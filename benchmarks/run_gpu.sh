#!/usr/bin/env bash
# Every GPU number in the README, nstjax and PyTorch (CUDA) side by side on the same GPU.
#   NSTJAX_ASSETS=/path/to/assets bash benchmarks/run_gpu.sh OUT_DIR [gatys|train|e2e|infer|all]
# PYTHON runs nstjax (default python3); TORCH_PYTHON a python with CUDA torch (default: PYTHON).
# gatys: Adam 100 steps at 512 and 1024 px, 500 steps at 512 px, L-BFGS 100 steps at 512 px.
# train: one training step at 256 px, batch 4, float32 and bfloat16 (torch: fp32 and bf16 autocast).
# e2e:   `python -m nstjax.train` itself (data pipeline, logging, checkpoints) for E2E_STEPS steps.
# infer: the network at 1080p, float32 and bfloat16, batch 1 and 8, vs pytorch/examples' TransformerNet.
set -euo pipefail
out=${1:?usage: run_gpu.sh OUT_DIR [gatys|train|e2e|infer|all]}
what=${2:-all}
py=${PYTHON:-python3}
tpy=${TORCH_PYTHON:-$py}
mkdir -p "$out"
has() { [[ $what == all || $what == *"$1"* ]]; }
if has gatys; then
  $py benchmarks/bench_gatys.py --sizes 512 1024 --steps 100 --warmup 5 \
      --torch-python "$tpy" --torch-device cuda --out-dir "$out"
  $py benchmarks/bench_gatys.py --sizes 512 --steps 500 --warmup 5 \
      --torch-python "$tpy" --torch-device cuda --out-dir "$out"
  $py benchmarks/bench_gatys.py --optimizer lbfgs --sizes 512 --steps 100 --warmup 5 \
      --torch-python "$tpy" --torch-device cuda --out-dir "$out"
fi
if has train; then
  $py benchmarks/bench_train.py --dtype float32 --steps 200 --warmup 5 \
      --torch-python "$tpy" --torch-device cuda --out "$out/train_float32.json"
  $py benchmarks/bench_train.py --dtype bfloat16 --steps 200 --warmup 5 \
      --torch-python "$tpy" --torch-device cuda --torch-amp bf16 --out "$out/train_bfloat16.json"
fi
if has e2e; then
  for dt in float32 bfloat16; do
    $py -m nstjax.train style=mosaic data=folder run_name=gpu_e2e_$dt model.dtype=$dt wandb=disabled \
        train.steps=${E2E_STEPS:-3000} train.log_every=100 train.sample_every=0 train.save_every=1000 \
        train.resume=false ${E2E_ARGS:-}
    cp runs/gpu_e2e_$dt/summary.json "$out/e2e_$dt.json"
  done
fi
if has infer; then
  $py benchmarks/bench_infer.py --torch-python "$tpy" --torch-device cuda --sizes 1920x1080 --batches 1 8 \
      --dtypes float32 bfloat16 --repeats 30 --rounds 1 --video-frames 0 --out "$out/infer_gpu.json"
fi
