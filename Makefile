# giblet-kedro: the two commands of the quick start.
SHELL := /bin/bash
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test bench viz clean-caches chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Whole workflow for the default experiment (generates the demo data on first use).
train: $(STAMP)
	$(BIN)/kedro run --pipelines=train $(if $(EXPERIMENT),--params experiment=$(EXPERIMENT))

## Headless Chromium for the lineage-review test (Debian's package; needs root or sudo).
chromium:
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null; \
	  else sudo apt-get install -y -q chromium >/dev/null; fi; } || echo "warning: could not install chromium"

## The whole test suite (what .ci/run calls).
test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/fmri_bench.py
	$(BIN)/python benchmarks/stimulus_bench.py
	$(BIN)/python benchmarks/train_bench.py

viz: $(STAMP)
	$(BIN)/kedro viz build --include-previews

clean-caches: $(STAMP)
	$(BIN)/kedro giblet caches --prune
