# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t kubetune-operator .   (slim: no torch, no CUDA)
#   docker build --target trainer  -t kubetune-trainer  .   (CUDA, torch, transformers, peft, accelerate)
# Both run as a numeric non-root user under tini, with a read-only root filesystem in mind:
# only /tmp and /cache (declared volumes) are written.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# Dependencies first (cache-friendly), then the source.
COPY pyproject.toml README.md ./
COPY api ./api
COPY operator ./operator
COPY trainer ./trainer
RUN pip install --no-cache-dir ".[operator]"
USER 65532:65532
ENV HOME=/tmp PYTHONUNBUFFERED=1
VOLUME ["/tmp"]
ENTRYPOINT ["/usr/bin/tini", "--"]
# /readyz and /metrics on 8080, kopf's /healthz (liveness) on 8081; settings from KUBETUNE_* env.
CMD ["kubetune-operator", "--all-namespaces"]

# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS trainer
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip tini \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch from the CUDA index: the package metadata deliberately does not pin it.
RUN pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cu126
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY operator ./operator
COPY trainer ./trainer
RUN pip install --no-cache-dir ".[train]"
USER 65532:65532
ENV HOME=/tmp PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KUBETUNE_CACHE=/cache MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/tmp", "/cache"]
ENTRYPOINT ["/usr/bin/tini", "--", "kubetune-train"]
CMD ["--config", "/etc/kubetune/trainer.json"]
