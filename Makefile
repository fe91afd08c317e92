# make demo  - stylize a photo with the default style (sets up .venv on first use)
# make test  - run the test suite on CPU (sets up .venv on first use)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export NSTJAX_ASSETS ?= $(abspath ../shared)
export WANDB_MODE ?= offline

.PHONY: demo test install bench-gatys bench-train clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m nstjax.stylize content.image=data/content/chicago.jpg style=mosaic \
		size=256 steps=100 output=outputs/demo/chicago_mosaic.png

# The tests simulate several CPU devices, whose collectives can deadlock on few cores unless
# XLA's pool has 8 threads; only the tests get it (more threads than cores slow one process: README).
test: export NPROC ?= 8
# Two workers at most, a module each: the tests are mostly single-threaded (compiles, subprocess
# start-up) and each worker holds a few GB.
test: install
	$(PY) -m pytest -q --durations=15 -n auto --maxprocesses=2 --dist loadfile --no-loadscope-reorder tests

bench-gatys: install
	bash benchmarks/setup_torch_env.sh
	$(PY) benchmarks/bench_gatys.py

bench-train: install
	bash benchmarks/setup_torch_env.sh
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf outputs multirun wandb .pytest_cache
