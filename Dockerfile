# syntax=docker/dockerfile:1.7
# Two images from one file (see "Images" in README.md and docs/install.md):
#   docker build --target operator -t kubetune-operator .   (slim: no torch, no CUDA)
#   docker build --target trainer  -t kubetune-trainer  .   (CUDA, torch, transformers, peft, accelerate)
# Both run as the numeric non-root user 65532 under tini, with a read-only root filesystem in
# mind: only the declared volumes (/tmp, and /cache in the trainer) are written at run time.
# tests/unit/test_dockerfile.py parses this file and checks all of that.
#
# Base images are pinned to full version tags. In production pin them by digest as well
# (`python:3.11.11-slim-bookworm@sha256:...`; `docker buildx imagetools inspect IMAGE` prints it)
# and bump both deliberately; digests cannot be looked up from where this file was written.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# The "base" flavour is enough: the torch wheels bring their own CUDA runtime, cuBLAS, cuDNN and NCCL.
# CUDA 12.8 wheels run on drivers >= 570 (>= 525 through minor-version compatibility).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG TORCH_VERSION=2.9.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# =======================================================================================
# operator: kopf, kubernetes client, pydantic, boto3. Never torch, never CUDA.
# It also runs the OpenAI-compatible API server (`kubetune-api`, gateway/; the chart's
# api-server Deployment sets that command): same dependencies, no torch either.
# =======================================================================================
FROM ${PYTHON_IMAGE} AS operator-build
# Set only by builds behind a TLS-intercepting proxy (.ci/images mounts the host's CA bundle there);
# a build arg is in the environment of RUN steps, never in the image.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first: a stub of the distribution (metadata only, empty source roots) installs
# every dependency of the `operator` extra; this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN mkdir -p api operator trainer gateway && touch README.md \
 && pip install ".[operator]"
# Then the source, installed over the stub without touching the dependencies.
COPY README.md ./
COPY api ./api
COPY operator ./operator
COPY trainer ./trainer
COPY gateway ./gateway
RUN pip install --no-deps --force-reinstall . \
 && python -c "import kubetune_operator.cli.kubetune_operator, kubetune_gateway.cli, kubetune_api.spec"

FROM ${PYTHON_IMAGE} AS operator
ARG DEBIAN_FRONTEND=noninteractive
# 65532 gets a passwd entry: kopf identifies itself with getpass.getuser(), which fails for a UID
# without one ("uid not found"); found by running the image (tests/e2e/test_images.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin nonroot
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
VOLUME ["/tmp"]
USER 65532:65532
# /readyz and /metrics on 8080, kopf's /healthz (liveness) on 8081; settings from KUBETUNE_* env.
# kubetune-api (the same image, another command) listens on 8000 (KUBETUNE_API_PORT).
EXPOSE 8080 8081 8000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["kubetune-operator", "--all-namespaces"]

# =======================================================================================
# trainer: CUDA base, torch from the CUDA wheel index, transformers, peft, accelerate,
# and bitsandbytes (the qlora extra) for lora.quantization.
# =======================================================================================
FROM ${CUDA_IMAGE} AS trainer-build
ARG DEBIAN_FRONTEND=noninteractive
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
# The CPU variant (.ci/images): an empty TORCH_INDEX_URL and a folder holding torch's CPU wheel.
ARG TORCH_FIND_LINKS=
ARG PIP_CERT
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
# torch from the CUDA index first (the largest layer, and the package metadata deliberately does
# not pin it); the `train` extra's `torch>=2.4` is then already satisfied.
RUN pip install "torch==${TORCH_VERSION}" \
      ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} \
      ${TORCH_FIND_LINKS:+--find-links "${TORCH_FIND_LINKS}"} \
 && python -c "import torch, sys; cpu = '${TORCH_FIND_LINKS}' == '' or torch.version.cuda is None; sys.exit(0 if cpu else 1)"
WORKDIR /src
COPY pyproject.toml ./
# gateway/ stays empty here: the API server is not part of the trainer image.
RUN mkdir -p api operator trainer gateway && touch README.md \
 && pip install ".[train,qlora]" \
 && python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 1)"
COPY README.md ./
COPY api ./api
COPY operator ./operator
COPY trainer ./trainer
RUN pip install --no-deps --force-reinstall . \
 && python -c "import kubetune_trainer.cli.kubetune_train, kubetune_api.spec"

FROM ${CUDA_IMAGE} AS trainer
ARG DEBIAN_FRONTEND=noninteractive
# A passwd entry for 65532: kopf, getpass and torch look the user up (getpwuid), and a UID
# without one fails them ("uid not found"); found by running the image (tests/e2e/test_images.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin nonroot
COPY --from=trainer-build /opt/venv /opt/venv
# Everything written at run time goes to /tmp (scratch, HOME) or /cache (downloads, compile caches),
# which the operator mounts as emptyDirs; the root filesystem stays read-only.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache/xdg \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRITON_CACHE_DIR=/cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
VOLUME ["/tmp", "/cache"]
USER 65532:65532
# /metrics and /progress (KUBETUNE_METRICS_PORT, 9090); 29500 is the multi-node rendezvous.
EXPOSE 9090 29500
# The operator's Jobs run `kubetune-train --config /etc/kubetune/trainer.json` (or `accelerate
# launch ... -m kubetune_trainer.cli.kubetune_train`); CMD is the same single-process command.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["kubetune-train", "--config", "/etc/kubetune/trainer.json"]
