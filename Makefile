# Set-up and main entry points. `make demo` and `make test` work on a fresh machine: the first call builds .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
# torch first and alone: the local CPU wheel, so no dependency can pull a CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test test-fast constraints vllm-env test-vllm kvpress-env

# Exact versions from $(CONSTRAINTS) (what the suite passed with); pyproject.toml keeps ranges for library users.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# One pytest-xdist worker per core (at most 4): each test runs single-threaded (tests/conftest.py).
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not vllm and not gpu"

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not vllm and not gpu"

# Refresh $(CONSTRAINTS): resolve ".[dev]" afresh (newest releases the ranges allow, torch held at $(TORCH))
# in a throwaway venv and freeze it. Then run `make test` (it reinstalls) and commit the file if it passes.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet --upgrade pip
	.venv-constraints/bin/pip install --quiet $(TORCH)
	.venv-constraints/bin/pip install --quiet "$(TORCH)" -e ".[dev]"
	{ echo "# Exact versions \`make test\` passed with (refresh: make constraints; see README). torch: the local CPU wheel."; \
	  .venv-constraints/bin/pip freeze --exclude-editable | sed -E 's/^torch==([^+]+)\+cpu$$/torch==\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-constraints

vllm-env:
	bash scripts/make_vllm_env.sh

test-vllm: vllm-env
	.venv-vllm/bin/python -m pytest -m vllm tests/vllm_env

kvpress-env:
	bash scripts/make_kvpress_env.sh
