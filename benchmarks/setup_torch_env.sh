#!/usr/bin/env bash
# Create the PyTorch benchmark environment (.venv-bench, gitignored) used by
# benchmarks/torch_ref.py. Independent of the Makefile and of the project's
# own .venv (torch is never installed there).
#
# Usage: bash benchmarks/setup_torch_env.sh [VENV_DIR]
#   VENV_DIR defaults to <repo root>/.venv-bench.
#   PYTHON   selects the interpreter (default: python3.11 if present, else python3).
#   TORCH_WHEEL_DIR, if set (or if /opt/wheels exists), is searched first for a
#   local torch wheel (pip --find-links, e.g. torch-2.13.0+cpu); otherwise
#   torch comes from the configured package index.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${1:-$root/.venv-bench}"

if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
  echo "[setup_torch_env] creating $venv with $PYTHON"
  "$PYTHON" -m venv "$venv"
fi

pip_args=(--disable-pip-version-check -q)
wheel_dir="${TORCH_WHEEL_DIR:-/opt/wheels}"
if [[ -d "$wheel_dir" ]]; then
  pip_args+=(--find-links "$wheel_dir")
fi

"$venv/bin/python" -m pip install "${pip_args[@]}" -r "$here/requirements-torch.txt"

"$venv/bin/python" - <<'PY'
import torch, numpy, h5py
print(f"[setup_torch_env] torch {torch.__version__}, numpy {numpy.__version__}, "
      f"h5py {h5py.__version__}, threads {torch.get_num_threads()}")
PY
echo "[setup_torch_env] done in $(( $(date +%s) - start )) s: $venv"
