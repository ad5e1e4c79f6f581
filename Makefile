# `make repro` and `make test` set everything up on a fresh machine, then do their job.
#
# torch: by default the CPU build pinned below. To use your own (a CUDA build, say), install it
# into .venv first, or pass TORCH_SPEC, e.g.
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
# An importable torch in .venv is never replaced.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.astroseg-installed

.PHONY: setup repro test clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

# The stages run `python stages/...`: put the venv first on PATH so they get its interpreter.
repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
