# The torch build to install. The default is the CPU wheel that this machine type keeps on disk.
# On an ordinary Linux host without a GPU, avoid the multi-GB CUDA build with:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# On a GPU host: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench bench-mirror bench-train bench-train-gpu clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev,demo]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m trainer.demo

test: setup
	$(BIN)/python -m pytest -q

bench: bench-mirror

bench-mirror: setup
	$(BIN)/python bench/mirror_bench.py

bench-train: setup
	$(BIN)/python bench/train_cpu.py

bench-train-gpu: setup  # needs a CUDA GPU; exits 2 with a message without one
	$(BIN)/python bench/train_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache
