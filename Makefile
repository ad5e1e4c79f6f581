# `make repro` and `make test` set everything up on a fresh machine, then do their job.
#
# torch: by default the CPU build pinned below, installed only when .venv has no torch that
# imports (so a CUDA build you installed yourself is kept). To switch builds, name one:
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
# A TORCH_SPEC given on the command line replaces the venv's torch unless the same spec
# installed it last; `make clean-venv` starts from scratch.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.astroseg-installed
TORCH_RECORD := $(VENV)/.torch-spec

.PHONY: setup repro test exp-show clean-venv FORCE

setup: $(STAMP)

# An explicit TORCH_SPEC always reaches the recipe, which decides whether torch must change.
ifeq ($(origin TORCH_SPEC),command line)
$(STAMP): FORCE
endif

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install $(TORCH_SPEC) && echo '$(TORCH_SPEC)' > $(TORCH_RECORD); \
	elif [ "$(origin TORCH_SPEC)" = "command line" ] && \
	     [ "$$(cat $(TORCH_RECORD) 2>/dev/null)" != '$(TORCH_SPEC)' ]; then \
		$(BIN)/pip uninstall -y torch && $(BIN)/pip install $(TORCH_SPEC) && \
		echo '$(TORCH_SPEC)' > $(TORCH_RECORD); \
	fi
	$(BIN)/pip install -e ".[dev]"
	touch $@

# The stages run `python stages/...`: put the venv first on PATH so they get its interpreter.
repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

# `dvc exp show` without the ~130 columns of file hashes, unchanged params, the loss, the
# creation time and the sub-scores (spiral.*, pooled.*): IoU, Dice, precision, recall and the
# params each experiment changed. The regexes are matched at the start of each column name.
EXP_SHOW_DROP ?= .*/|^raw$$|^spiral|^pooled|^n_images$$|^threshold$$|^tta$$|^loss$$|^Created$$
exp-show: $(STAMP)
	$(BIN)/dvc exp show --no-pager --only-changed --drop '$(EXP_SHOW_DROP)'

clean-venv:
	rm -rf $(VENV)

FORCE:
