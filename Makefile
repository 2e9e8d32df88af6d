# Quick start on a fresh machine: `make train` or `make test`.
# Each target creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV   ?= .venv
# Which torch to install. The default is the normal PyPI release; CI on a CPU-only machine pins the
# CPU build it finds on disk (`TORCH=torch==2.13.0`, see .ci/run).
TORCH  ?= torch
BIN    := $(VENV)/bin

.PHONY: train test test-fast lint benchmark clean install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

train: install
	$(BIN)/python scripts/train.py attention=multihead

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

benchmark: install
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
