# giblet-kedro: the two commands of the quick start.
SHELL := /bin/bash
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast bench lab-bench viz docs clean-caches chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,mlflow,dask]'
	touch $(STAMP)

install: $(STAMP)

## Whole workflow for the default experiment (generates the demo data on first use).
train: $(STAMP)
	$(BIN)/kedro run --pipelines=train $(if $(EXPERIMENT),--params experiment=$(EXPERIMENT))

## Headless Chromium for the lineage-review test (Debian's package; needs root or sudo).
APT := $(if $(filter 0,$(shell id -u)),,sudo) apt-get
chromium:
	@command -v chromium >/dev/null || $(APT) install -y -q chromium >/dev/null 2>&1 \
	  || { $(APT) update -q >/dev/null && $(APT) install -y -q chromium >/dev/null; } \
	  || echo "warning: could not install chromium (the lineage-review test needs it)"

## The whole test suite (what .ci/run calls): everything but the `serial` tier on two
## pytest-xdist workers (the shared demo runs each on one worker), then `serial` alone.
## Both passes share the demo runs built once (GIBLET_TEST_SHARED).
XDIST := -n 2 --dist loadgroup
## Both passes run whatever the first gives; the exit status is the first failure's (a
## pass that PYTEST_ARGS leaves without tests, exit 5, is no failure).
test: $(STAMP) chromium
	@shared=$$(mktemp -d -t giblet-tests.XXXXXX); trap 'rm -rf "$$shared"' EXIT; \
	export GIBLET_TEST_SHARED="$$shared"; status=0; \
	$(BIN)/python -m pytest $(XDIST) -m "not serial" $(PYTEST_ARGS) || { c=$$?; [ $$c -eq 5 ] || status=$$c; }; \
	$(BIN)/python -m pytest -p no:xdist -m serial $(PYTEST_ARGS) || { c=$$?; [ $$c -eq 5 ] || [ $$status -ne 0 ] || status=$$c; }; \
	exit $$status

## The inner loop: unit and in-memory pipeline tests (no e2e, training or serial tier).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not e2e and not trains and not serial" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/fmri_bench.py
	$(BIN)/python benchmarks/stimulus_bench.py
	$(BIN)/python benchmarks/train_bench.py

lab-bench: $(STAMP)
	$(BIN)/python benchmarks/lab_bench.py --baseline

## The spec reference and JSON Schema under docs/, generated from the schema.
docs: $(STAMP)
	$(BIN)/kedro giblet schema --reference

viz: $(STAMP)
	$(BIN)/kedro viz build --include-previews

clean-caches: $(STAMP)
	$(BIN)/kedro giblet caches --prune
