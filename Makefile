# The two commands: `make demo` and `make test`. Both create or reuse .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tessera-installed
TINY_MODEL := .cache/models/tessera-tiny
TINY_STAMP := $(TINY_MODEL)/.complete
# npm ci writes this file last, so its age says whether node_modules matches the lock.
NODE_STAMP := node_modules/.package-lock.json

.PHONY: demo test lint format venv tiny-model node-tools bench clean

venv: $(STAMP)

# torch first, pinned, so pip takes the local CPU build and never the CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

tiny-model: $(TINY_STAMP)

# anvil (the local EVM chain) comes from npm, pinned in package-lock.json; nothing at run time.
node-tools: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Order-only on the venv: reinstalling packages must not retrain the model.
$(TINY_STAMP): src/tessera/models/make_tiny.py src/tessera/models/corpus.py $(wildcard src/tessera/models/corpus/*.txt) | $(STAMP)
	$(BIN)/tessera models make-tiny $(TINY_MODEL)

demo: $(TINY_STAMP) $(NODE_STAMP)
	$(BIN)/tessera demo --model-dir $(TINY_MODEL)

# mypy takes its files (the strict packages) and flags from [tool.mypy] in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --config-file pyproject.toml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(TINY_STAMP) $(NODE_STAMP) lint
	TESSERA_TINY_MODEL_DIR=$(TINY_MODEL) $(BIN)/python -m pytest

bench: $(TINY_STAMP)
	TESSERA_TINY_MODEL_DIR=$(TINY_MODEL) $(BIN)/python bench/tiny_model_speed.py
	TESSERA_TINY_MODEL_DIR=$(TINY_MODEL) $(BIN)/python bench/gateway_overhead.py
	TESSERA_TINY_MODEL_DIR=$(TINY_MODEL) $(BIN)/python bench/audit_cost.py
	$(BIN)/python bench/settled_requests.py
	$(BIN)/python bench/request_ids.py
	$(BIN)/python bench/router.py
	TESSERA_TINY_MODEL_DIR=$(TINY_MODEL) $(BIN)/python bench/hostile_load.py
	$(BIN)/python bench/front_door.py
	TESSERA_TINY_MODEL_DIR=$(TINY_MODEL) $(BIN)/python bench/explorer.py
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache node_modules
