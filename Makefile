# Set-up and main entry points. `make demo` and `make test` work on a fresh machine: the first call builds .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast vllm-env test-vllm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first (the local 2.13.0 wheel), so no dependency can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -m "not vllm and not gpu"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not vllm and not gpu"

vllm-env:
	bash scripts/make_vllm_env.sh

test-vllm: vllm-env
	.venv-vllm/bin/python -m pytest -m vllm tests/vllm_env
