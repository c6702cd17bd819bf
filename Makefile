# Two entry points: `make quickstart` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines: this torch wheel lies on disk; a bare `torch` requirement pulls a multi-GB
# CUDA build. The pin lives here (and in .ci/run), not in the package metadata.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# Real Helm (v4) for the chart tests: the helm-sdkpy bindings need Python >= 3.12, in a venv of their own.
# The first python3.12 that runs (a pyenv shim on PATH may not).
PYTHON312 ?= $(shell for p in $$(command -v python3.12) $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)
HELM_VENV ?= .venv-helm
CHART_CRD := charts/kubetune/files/crds/kubetune.io_finetunejobs.yaml
GENERATED_DOCS := docs/operator.md docs/trainer.md

.PHONY: quickstart test system-deps lint typecheck imports crds crd-check docs unit pytest bench clean helm-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.train-installed: $(BIN)/python pyproject.toml
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[train]"
	touch $@

$(VENV)/.dev-installed: $(VENV)/.train-installed
	$(PIP) install -e ".[train,operator,dev]"
	touch $@

examples/quickstart/model/config.json: $(VENV)/.train-installed examples/quickstart/build_base_model.py
	$(BIN)/python examples/quickstart/build_base_model.py

## quickstart: build the toy base model, then fine-tune it on CPU with the quickstart FineTuneJob
quickstart: examples/quickstart/model/config.json
	$(BIN)/kubetune run examples/quickstart/finetunejob.yaml --overwrite

## test: lint, type-check, import-layer contracts, CRD and docs drift checks, and the whole pytest suite
## (slow tests included, the Helm chart's too)
test: system-deps $(VENV)/.dev-installed $(HELM_VENV)/.installed lint typecheck imports crd-check pytest

## system-deps: Debian packages the tests use (kubectl), installed when missing and we are root
system-deps:
	@.ci/system-deps

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check api operator trainer tests bench examples
	$(BIN)/ruff format --check api operator trainer tests bench examples

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy -p kubetune_api -p kubetune_trainer -p kubetune_operator
	$(BIN)/mypy bench/train_throughput.py bench/operator_scale.py

## imports: import-linter contracts (pyproject.toml [tool.importlinter]): layers, independence, no cycles
imports: $(VENV)/.dev-installed
	$(BIN)/lint-imports --no-cache

## docs: regenerate the reference tables in docs/ from the models (status fields, failure table, messages)
docs: $(BIN)/python
	PYTHONPATH=api $(BIN)/python -m kubetune_api.docs $(GENERATED_DOCS)

## crds: regenerate the CRD, and the Helm chart's copy of it
crds: $(BIN)/python
	PYTHONPATH=api $(BIN)/python -m kubetune_api.crd -o crds/kubetune.io_finetunejobs.yaml -o $(CHART_CRD)

crd-check: $(VENV)/.dev-installed
	PYTHONPATH=api $(BIN)/python -m kubetune_api.crd --check crds/kubetune.io_finetunejobs.yaml $(CHART_CRD)
	PYTHONPATH=api $(BIN)/python -m kubetune_api.docs --check $(GENERATED_DOCS)
	$(BIN)/python charts/kubetune/generate_readme.py --check

## helm-venv: real Helm for tests/chart (helm-sdkpy, Python 3.12)
helm-venv: $(HELM_VENV)/.installed

$(HELM_VENV)/.installed:
	@test -n "$(PYTHON312)" || { echo "python3.12 not found: set PYTHON312=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON312) -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/python -m pip --disable-pip-version-check -q install helm-sdkpy
	touch $@

pytest: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) $(HELM_VENV) runs .pytest_cache .mypy_cache .ruff_cache examples/quickstart/model
