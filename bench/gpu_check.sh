#!/usr/bin/env bash
# The GPU check: one command on one H100/H200 with no network, in at most 8 minutes.
#
#   make gpu-wheels          # here (with network): the wheels the GPU image lacks, in .gpu-wheels/
#   bash bench/gpu_check.sh  # there: prints one table; logs and JSON go to $OUT (default: a temp dir)
#
# It runs, each under its own time limit:
#   1. the CUDA-marked tests (tests/gpu: the Llama-3-8B-shaped QLoRA step, DoRA on a quantised base,
#      SDPA per packed row in bf16 against masked SDPA);
#   2. the Llama-3.2-1B-shaped bench at seq 2048: kubetune vs HF Trainer + PEFT (tokens/s, MFU, peak memory);
#   3. the attention implementation and packing verdict each model family gets on this GPU;
# then bench/gpu_report.py prints them as one table. A step that fails or times out shows as such
# in the table; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="api:trainer:tests${PYTHONPATH:+:$PYTHONPATH}"

# The GPU image has torch, transformers, peft and accelerate but not bitsandbytes, boto3 or
# pydantic: they travel as wheels (make gpu-wheels) and are installed outside the image's venv.
if compgen -G ".gpu-wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/kubetune-site .gpu-wheels/*.whl || { echo "gpu_check: wheel install failed" >&2; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/kubetune-site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1

# --noconftest: tests/conftest.py starts S3 and API servers this machine does not need (or have).
timeout 240 "$PY" -m pytest tests/gpu -m cuda -s -q --noconftest -p no:cacheprovider \
    --junitxml "$OUT/cuda-tests.xml" >"$OUT/cuda-tests.log" 2>&1
echo "cuda-tests exit $?" >>"$OUT/gpu.txt"

timeout 150 "$PY" bench/train_throughput.py --device cuda --shape llama-1b --seq 2048 --repeats 1 \
    --json "$OUT/bench-1b.json" >"$OUT/bench-1b.log" 2>&1
echo "bench-1b exit $?" >>"$OUT/gpu.txt"

timeout 60 "$PY" bench/family_attention.py --device cuda --json "$OUT/families.json" >"$OUT/families.log" 2>&1
echo "families exit $?" >>"$OUT/gpu.txt"

"$PY" bench/gpu_report.py "$OUT" | tee "$OUT/table.md"
