# The torch build to install. The default is the CPU wheel that this machine type keeps on disk.
# On an ordinary Linux host without a GPU, avoid the multi-GB CUDA build with:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# On a GPU host: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup services demo test test-fast test-gpu-image bench bench-mirror bench-serve bench-oci bench-webui bench-trainer-serve bench-train bench-train-gpu clean

# $(call make_venv,DIR,EXTRA PINS): torch first (the spec above), then this package and its deps
define make_venv
	test -x $(1)/bin/python || $(PY) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(1)/bin/python -m pip install -q -e ".[dev,demo]" $(2)
	touch $(1)/bin/.installed
endef

$(BIN)/.installed: pyproject.toml
	$(call make_venv,$(VENV),)

setup: $(BIN)/.installed

# The system tools the tests start (a registry, skopeo, Chromium and its driver, nginx, curl):
# installed with apt-get when missing and this user may, else one line with the command to run;
# the tests that need a missing one then say so (skipped here, failed in CI). The table is
# tests/fixtures/requires.py.
services: setup
	$(BIN)/python -m tests.fixtures.requires

demo: setup
	$(BIN)/python -m trainer.demo

test: setup services
	$(BIN)/python -m pytest -q

test-fast: setup  # the quick loop: everything but the slow end-to-end runs, stop at the first failure
	$(BIN)/python -m pytest -q -x -m "not slow" --ignore=tests/test_e2e.py

# The library versions of the lent GPU machine's image (torch aside: the CPU wheel here), in a
# venv of their own, so code that a GPU session runs there is tested here first.
GPU_IMAGE_PINS ?= transformers==5.17.0 huggingface_hub==1.33.0 sentence-transformers==6.0.1
COMPAT := .venv-gpu-image

$(COMPAT)/bin/.installed: pyproject.toml
	$(call make_venv,$(COMPAT),$(GPU_IMAGE_PINS))

test-gpu-image: $(COMPAT)/bin/.installed  # the trainer, e2e and GPU-bench smoke tests (and mirror serve's Hub clients) on the GPU image's versions
	$(COMPAT)/bin/python -m pytest -q tests/trainer tests/test_e2e.py tests/test_bench_gpu.py tests/mirror/test_pull.py tests/mirror/test_pull_inplace.py tests/mirror/test_serve_clients.py tests/mirror/test_serve_trainer.py

bench: bench-mirror

bench-mirror: setup
	$(BIN)/python bench/mirror_bench.py

bench-serve: setup  # mirror serve vs nginx (nginx-light, installed with apt-get when missing)
	$(BIN)/python bench/serve_bench.py

bench-oci: setup  # mirror push/pull vs skopeo copy against a loopback docker-registry
	$(BIN)/python bench/oci_bench.py

bench-webui: setup
	$(BIN)/python bench/webui_bench.py

bench-trainer-serve: setup  # trainer serve's batching vs per-request encode, real MiniLM
	$(BIN)/python bench/trainer_serve_bench.py

bench-train: setup
	$(BIN)/python bench/train_cpu.py  # the seed config when ../shared/seed-data exists
	$(BIN)/python bench/train_cpu.py --data project

bench-train-gpu: setup  # needs a CUDA GPU (exits 2 without one); a lent GPU with no venv: bash bench/gpu_session.sh
	$(BIN)/python bench/train_gpu.py --compile

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache
