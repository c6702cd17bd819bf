"""The GPU types kubetune plans for: memory, peak bf16 throughput, and an assumed LoRA MFU.

Shared by the trainer's fit-and-cost planner (preflight) and the operator, so both name a GPU the
same way. The type of a job's GPUs is read from the node labels its `resources.nodeSelector` asks
for (NVIDIA GPU feature discovery's `nvidia.com/gpu.product`, GKE's `cloud.google.com/gke-accelerator`,
or any label whose value names the product); a job that names none has an unknown type, and then
no fit verdict or GPU-hours are claimed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 2**30
# A job "fits" a GPU when its memory estimate leaves this share free: the estimate is ±30%, and
# the CUDA caching allocator fragments. The planner's verdict and sharding: auto both use it.
FIT_HEADROOM = 0.10


def usable_bytes(gpu_memory_bytes: int) -> float:
    """The memory a job's estimate may take on a GPU of this size."""
    return gpu_memory_bytes * (1 - FIT_HEADROOM)


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_bytes: int  # as nvidia-smi reports the total, not the marketing figure
    peak_bf16_flops: float  # dense (no sparsity), per GPU
    # Model FLOPs utilisation assumed for a bf16 LoRA step (4·N FLOPs/token counted, frozen
    # weights get no weight gradient). An assumption until bench/gpu_check.sh measures it.
    lora_mfu: float
    max_per_node: int = 8  # the largest machines sold with this GPU (HGX/DGX boards, cloud instances)


# nvidia-smi's memory.total in MiB, NVIDIA datasheets' dense BF16 tensor throughput.
GPU_TYPES: dict[str, GpuType] = {
    gpu.name: gpu
    for gpu in (
        GpuType("A100-40GB", 40_960 * 2**20, 312e12, 0.40),
        GpuType("A100-80GB", 81_920 * 2**20, 312e12, 0.40),
        GpuType("H100-80GB", 81_559 * 2**20, 989e12, 0.35),
        GpuType("H200-141GB", 143_771 * 2**20, 989e12, 0.35),
        GpuType("L40S-48GB", 46_068 * 2**20, 362e12, 0.35),
        GpuType("L4-24GB", 23_034 * 2**20, 121e12, 0.30),
    )
}

# Label values as GPU feature discovery and the clouds write them, most specific pattern first:
# "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB", "nvidia-tesla-a100" (GKE's 40 GB A100),
# "nvidia-a100-80gb", "NVIDIA-L40S", "nvidia-l4".
_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"h200", "H200-141GB"),
    (r"h100", "H100-80GB"),
    (r"a100.*80", "A100-80GB"),
    (r"a100", "A100-40GB"),
    (r"l40s", "L40S-48GB"),
    (r"(^|[^a-z0-9])l4($|[^a-z0-9])", "L4-24GB"),
)


def gpu_type_named(value: str) -> GpuType | None:
    """The GPU type a label value (or a type name of GPU_TYPES) names, or None."""
    if value in GPU_TYPES:
        return GPU_TYPES[value]
    lowered = value.lower()
    for pattern, name in _PATTERNS:
        if re.search(pattern, lowered):
            return GPU_TYPES[name]
    return None


def gpu_type_from_node_selector(node_selector: dict[str, str]) -> GpuType | None:
    """The GPU type the job's node selector pins, or None when it names no known type."""
    for value in node_selector.values():
        gpu = gpu_type_named(value)
        if gpu is not None:
            return gpu
    return None
