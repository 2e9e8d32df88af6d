# Quick start on a fresh machine: `make train` or `make test`.
# Each target creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV   ?= .venv
# Which torch to install: a pip spec, options included. The default is the normal PyPI release (CUDA on
# Linux); CI on a CPU-only machine pins the CPU build it finds on disk (`TORCH=torch==2.13.0`, see .ci/run); a
# CPU-only user: `make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"`.
TORCH  ?= torch
# Extras installed with the project: dev (tests, lint) always; add launchers / tune / loggers or all, e.g.
# `make install EXTRAS=dev,all` (what CI does). The core install stays lean.
EXTRAS ?= dev
BIN    := $(VENV)/bin

.PHONY: train test test-fast lint benchmark gpu-check tensorboard clean install FORCE

install: $(VENV)/.installed

# What was installed, so that a different TORCH or EXTRAS reinstalls (the file changes only when they do).
SPEC := torch: $(TORCH) | extras: $(EXTRAS)
$(VENV)/.spec: FORCE
	@mkdir -p $(VENV)
	@echo '$(SPEC)' | cmp -s - $@ || echo '$(SPEC)' > $@

$(VENV)/.installed: pyproject.toml $(VENV)/.spec
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
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

# Every run and sweep under outputs/ (or $ATTENTION_LAB_OUTPUTS), with all attention-map images kept.
TB_PORT ?= 6006
tensorboard: install
	@$(BIN)/python -c "from attention_lab.training.summary import tensorboard_url as u; print('open', u($(TB_PORT)))"
	$(BIN)/tensorboard --logdir $${ATTENTION_LAB_OUTPUTS:-outputs} --port $(TB_PORT) --samples_per_plugin images=100

# GPU readiness in 8 minutes at most (README: "GPU readiness in one command"); exit 2 without CUDA.
# Options through GPU_CHECK_ARGS, e.g. make gpu-check GPU_CHECK_ARGS="--only tests bench"
gpu-check: install
	$(BIN)/python scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
