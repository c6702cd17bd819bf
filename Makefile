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

.PHONY: quickstart test images images-if-root system-deps lint typecheck imports crds crd-check docs unit pytest bench gpu-wheels clean helm-venv

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
test: system-deps $(VENV)/.dev-installed $(HELM_VENV)/.installed lint typecheck imports crd-check images-if-root pytest

## images: build the operator image and the trainer's CPU variant with buildah (.ci/images; root, no registry needed)
images:
	.ci/images

# make test builds the images where it can (root: debootstrap and buildah need it); tests/e2e/test_images.py
# runs them, and skips without them unless KUBETUNE_REQUIRE_IMAGES=1 (.ci/run sets it).
images-if-root:
	@if [ "$$(id -u)" -eq 0 ]; then .ci/images; else echo "warning: not root: images not built; their tests skip" >&2; fi

## system-deps: Debian packages the tests use (kubectl), installed when missing and we are root
system-deps:
	@.ci/system-deps

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check api operator trainer gateway tests bench examples
	$(BIN)/ruff format --check api operator trainer gateway tests bench examples

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy -p kubetune_api -p kubetune_trainer -p kubetune_operator -p kubetune_gateway
	$(BIN)/mypy bench/train_throughput.py bench/operator_scale.py bench/gpu_report.py bench/qlora_cpu.py bench/plan_table.py bench/memory_calibration.py bench/chaos.py

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

## gpu-wheels: the wheels bench/gpu_check.sh installs on the GPU machine (its image lacks them; no network there)
GPU_WHEELS := bitsandbytes==0.50.2 boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0 \
	pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
gpu-wheels:
	mkdir -p .gpu-wheels
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .gpu-wheels $(GPU_WHEELS)

clean:
	rm -rf $(VENV) $(HELM_VENV) runs .pytest_cache .mypy_cache .ruff_cache examples/quickstart/model
