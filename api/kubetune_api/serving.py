"""The serving handoff: what vLLM's LoRA loader accepts, and ready-to-run serving snippets.

Pure (no torch, no file or network I/O), so the trainer (which reads the published adapter),
the operator (which has only the accepted spec and the adapter's URI) and the tests share one
set of rules:

    check_vllm_adapter(adapter_config, tensor_names, model_type) -> [problem, ...]   # [] = loads
    vllm_max_lora_rank(r)                      -> the smallest `--max-lora-rank` choice >= r
    serving_snippets(job, base, adapter, ...)  -> `vllm serve` command, KServe InferenceService

The rules restate vLLM's loader as released in vLLM 0.33.0 (vllm/lora/peft_helper.py,
lora_model.py, utils.py, worker_manager.py, config/lora.py and the model classes'
packed_modules_mapping); docs/serving.md lists each with its source, and
tests/integration/test_vllm_loader_differential.py runs vLLM's own loader code against them.
A problem is one sentence that names the field or tensor and says what to do.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

# vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]; default 16.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16

# What vLLM can map a LoRA onto, per model_type: the suffixes of the model class's LinearBase
# layers, with packed layers (qkv_proj, gate_up_proj) expanded through packed_modules_mapping
# into the names PEFT saves (q_proj, k_proj, ...), as worker_manager builds `expected_lora_modules`.
_LLAMA_STYLE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
VLLM_LORA_MODULES: dict[str, frozenset[str]] = {
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gemma2": _LLAMA_STYLE,
    "gemma3_text": _LLAMA_STYLE,
    "granite": _LLAMA_STYLE,
    # Phi-3 checkpoints hold the fused layers themselves: packed_modules_mapping maps
    # qkv_proj -> [qkv_proj] and gate_up_proj -> [gate_up_proj].
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
}

# Adapters on the embeddings or the output head: vLLM loads them only for model classes that
# declare the module in `embedding_modules` (LlamaForCausalLM does, Qwen2ForCausalLM does not),
# never through the generic linear path, and is phasing the extra-vocabulary machinery out.
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "embed_in", "embed_out", "word_embeddings"})

# PEFT init schemes that only set the starting weights (peft_helper._init_is_supported); any
# other string (pissa, olora, corda, loftq) changes the base weights when PEFT loads the adapter.
_PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
# modules_to_save vLLM accepts: only the head of a classification model.
_CLASSIFIER_HEADS = frozenset({"classifier", "score"})
_PREFIX = "base_model.model."
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")
_MAX_TENSOR_PROBLEMS = 3  # one line per kind of bad key is enough; the rest are counted


def vllm_max_lora_rank(r: int) -> int | None:
    """The `--max-lora-rank` to start vLLM with for rank `r`; None when r is beyond every choice."""
    return next((choice for choice in VLLM_MAX_LORA_RANKS if choice >= r), None)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def check_adapter_config(config: Mapping[str, Any]) -> list[str]:
    """The adapter_config.json rules (PEFTHelper.from_dict, _validate_features, validate_legal)."""
    problems: list[str] = []
    missing = [name for name in ("r", "lora_alpha", "target_modules") if name not in config]
    if missing:
        problems.append(f"adapter_config.json lacks {', '.join(missing)}: vLLM requires r, lora_alpha, target_modules")
    ranks = [int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    if "r" in config and min(ranks) <= 0:
        problems.append(f"r={config.get('r')}: vLLM requires a positive LoRA rank")
    top = max(ranks)
    if top > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(
            f"r={top}: above {VLLM_MAX_LORA_RANKS[-1]}, the largest --max-lora-rank vLLM accepts "
            f"({', '.join(map(str, VLLM_MAX_LORA_RANKS))}); train with lora.r <= 512 or merge the adapter"
        )
    if config.get("use_dora"):
        problems.append(
            "use_dora: vLLM does not load DoRA adapters; set lora.useDora false, "
            "or set output.mergeAdapter and serve the merged weights"
        )
    if str(config.get("bias", "none")) != "none":
        problems.append(f"bias={config.get('bias')!r}: vLLM refuses adapter biases (bias must be 'none')")
    if config.get("lora_bias"):
        problems.append("lora_bias: vLLM does not support LoRA bias")
    unsupported = [m for m in _as_list(config.get("modules_to_save")) if m not in _CLASSIFIER_HEADS]
    if unsupported:
        problems.append(
            f"modules_to_save={unsupported}: vLLM cannot load fully trained modules saved with an adapter "
            "(only classifier/score heads); merge the adapter to serve them"
        )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        problems.append(f"init_lora_weights={init!r}: changes the base weights when loaded; vLLM refuses it")
    for name, what in (
        ("layer_replication", "layer replication"),
        ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
        ("use_qalora", "QALoRA"),
        ("use_bdlora", "block-diagonal LoRA (BD-LoRA)"),
    ):
        if config.get(name):
            problems.append(f"{name}: vLLM does not support {what}")
    targets = config.get("target_modules")
    named = [t for t in _as_list(targets) if t.rsplit(".", 1)[-1] in EMBEDDING_MODULES]
    if isinstance(targets, list) and named:
        problems.append(_embedding_problem(named[0]))
    return problems


def _embedding_problem(module: str) -> str:
    return (
        f"{module}: a LoRA on the embeddings or output head loads in vLLM only for model classes that declare "
        "it (and never for a tied head); remove it from lora.targetModules, or merge the adapter"
    )


def _module_of(key: str) -> str | None:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` -> `model.layers.0.self_attn.q_proj`."""
    for suffix in _LORA_SUFFIXES:
        if key.endswith(suffix):
            return key.removeprefix(_PREFIX)[: -len(suffix)]
    return None


def check_tensor_names(names: Iterable[str], model_type: str | None) -> list[str]:
    """adapter_model.safetensors key rules (utils.parse_fine_tuned_lora_name, check_unexpected_modules)."""
    problems: list[str] = []
    unparsable: list[str] = []
    unexpected: set[str] = set()
    embedding: set[str] = set()
    allowed = VLLM_LORA_MODULES.get(model_type or "")
    for key in names:
        if ".base_layer." in key:
            # vLLM skips these (lora_model.check_unexpected_modules, is_base_embedding_weights): PEFT
            # saves the base embedding/head next to an adapter on it, and fused MoE experts so
            continue
        if "lora_magnitude_vector" in key:
            problems.append(f"{key}: a DoRA magnitude vector; vLLM does not load DoRA adapters")
            break
        module = _module_of(key)
        if module is None:
            unparsable.append(key)
            continue
        suffix = module.rsplit(".", 1)[-1]
        if suffix in EMBEDDING_MODULES:
            embedding.add(suffix)
        elif allowed is not None and suffix not in allowed:
            unexpected.add(suffix)
    if unparsable:
        shown = ", ".join(unparsable[:_MAX_TENSOR_PROBLEMS])
        more = f" and {len(unparsable) - _MAX_TENSOR_PROBLEMS} more" if len(unparsable) > _MAX_TENSOR_PROBLEMS else ""
        problems.append(
            f"adapter_model.safetensors holds {shown}{more}: not a LoRA weight "
            "(vLLM reads only base_model.model.<module>.lora_A.weight / lora_B.weight)"
        )
    problems.extend(_embedding_problem(name) for name in sorted(embedding))
    if unexpected:
        problems.append(
            f"target modules {sorted(unexpected)}: vLLM's {model_type} model has no LoRA layer of that name "
            f"(it maps {sorted(allowed or ())})"
        )
    return problems


def check_vllm_adapter(config: Mapping[str, Any], tensor_names: Iterable[str], model_type: str | None) -> list[str]:
    """Every reason vLLM's LoRA loader would refuse this adapter for a `model_type` base; [] when it loads."""
    problems = check_adapter_config(config)
    for problem in check_tensor_names(tensor_names, model_type):
        if problem not in problems:  # an lm_head target and its tensors are one problem
            problems.append(problem)
    return problems


# -- snippets --------------------------------------------------------------------------------------

KSERVE_NAME_MAX = 45  # the predictor's Service name adds "-predictor" and must stay a 63-char label
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
BASE_MOUNT = "/mnt/models/base"
ADAPTER_MOUNT = "/mnt/models/adapter"
MERGED_MOUNT = "/mnt/models/merged"
MERGED_DIR = "merged"


def kserve_name(job: str) -> str:
    """A DNS-1035 label (so also an RFC 1123 label) for the InferenceService, from the job's name."""
    name = _NOT_LABEL.sub("-", job.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"ftj-{name}"
    return name[:KSERVE_NAME_MAX].rstrip("-")


def _join(uri: str, child: str) -> str:
    return uri.rstrip("/") + "/" + child + "/"


def _fetch(uri: str, local: str, endpoint: str | None, exclude: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """How to get `uri` onto the serving machine: (a shell step or None, the local path vLLM reads).

    vLLM reads a local directory or a Hugging Face repo id, never s3://; an S3 copy is synced
    first. A pvc:// claim is read where it is mounted (/mnt/<claim>), a file:// path as it is.
    """
    if uri.startswith("s3://"):
        step = ["aws", "s3", "sync", uri.rstrip("/") + "/", local]
        if endpoint:
            step += ["--endpoint-url", endpoint]
        for pattern in exclude:
            step += ["--exclude", pattern]
        return shlex.join(step), local
    if uri.startswith("pvc://"):
        return None, "/mnt/" + uri.removeprefix("pvc://").rstrip("/")
    return None, uri.removeprefix("file://").rstrip("/") or "/"


def _lora_module(name: str, path: str) -> str:
    # vLLM's LoRAParserAction reads `name=path` only when there is no comma; otherwise JSON
    return json.dumps({"name": name, "path": path}) if "," in path else f"{name}={path}"


def _kserve_uri(uri: str) -> str:
    # KServe's storage initializer fetches s3://, gs://, hf:// and pvc://; a local path is shown as
    # given (docs/serving.md: copy it to a bucket or a volume first).
    return uri.rstrip("/") + "/" if "://" in uri else uri


@dataclass(frozen=True)
class ServingSnippets:
    """Ready-to-run serving of one published adapter (and of the merged weights when there are any)."""

    vllm_command: str | None  # None when vLLM cannot load the adapter (see problems)
    kserve_inference_service: str | None
    merged_vllm_command: str | None = None
    merged_kserve_inference_service: str | None = None
    max_lora_rank: int | None = None
    problems: list[str] = field(default_factory=list)


def _isvc(name: str, storage: list[dict[str, str]], args: list[str]) -> str:
    manifest = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "huggingface"},
                    "storageUris": storage,
                    "args": args,
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            }
        },
    }
    return yaml.safe_dump(manifest, sort_keys=False)


def serving_snippets(
    job: str,
    base_model_uri: str,
    adapter_uri: str,
    rank: int,
    *,
    storage_endpoint: str | None = None,
    merged: bool = False,
    problems: list[str] | None = None,
) -> ServingSnippets:
    """The `vllm serve` command and the KServe InferenceService for the adapter at `adapter_uri`.

    `problems` (from check_vllm_adapter) withhold the LoRA snippets: a command vLLM refuses is not
    ready to run. With `merged` (output.mergeAdapter) the merged weights under `merged/` are served
    as a plain model, which works whatever the adapter's problems.
    """
    problems = list(problems or [])
    max_rank = vllm_max_lora_rank(rank)
    name = kserve_name(job)
    base_step, base_path = _fetch(base_model_uri, "./base-model", storage_endpoint)
    vllm_command = kserve = merged_vllm = merged_kserve = None
    if not problems and max_rank is not None:
        adapter_step, adapter_path = _fetch(
            adapter_uri, f"./adapters/{name}", storage_endpoint, exclude=("checkpoints/*", f"{MERGED_DIR}/*")
        )
        serve = [
            "vllm",
            "serve",
            base_path,
            "--enable-lora",
            "--max-lora-rank",
            str(max_rank),
            "--lora-modules",
            _lora_module(name, adapter_path),
        ]
        vllm_command = "\n".join(step for step in (base_step, adapter_step, shlex.join(serve)) if step)
        kserve = _isvc(
            name,
            [
                {"uri": _kserve_uri(base_model_uri), "path": BASE_MOUNT},
                {"uri": _kserve_uri(adapter_uri), "path": ADAPTER_MOUNT},
            ],
            [
                f"--model_name={name}-base",
                f"--model_dir={BASE_MOUNT}",
                "--enable-lora",
                f"--max-lora-rank={max_rank}",
                f"--lora-modules={_lora_module(name, ADAPTER_MOUNT)}",
            ],
        )
    if merged:
        merged_uri = _join(adapter_uri, MERGED_DIR)
        merged_step, merged_path = _fetch(merged_uri, f"./models/{name}", storage_endpoint)
        serve = ["vllm", "serve", merged_path, "--served-model-name", name]
        merged_vllm = "\n".join(step for step in (merged_step, shlex.join(serve)) if step)
        merged_kserve = _isvc(
            name,
            [{"uri": _kserve_uri(merged_uri), "path": MERGED_MOUNT}],
            [f"--model_name={name}", f"--model_dir={MERGED_MOUNT}"],
        )
    return ServingSnippets(
        vllm_command=vllm_command,
        kserve_inference_service=kserve,
        merged_vllm_command=merged_vllm,
        merged_kserve_inference_service=merged_kserve,
        max_lora_rank=max_rank,
        problems=problems,
    )


def spec_adapter_config(
    r: int, alpha: float, target_modules: list[str], *, use_dora: bool, use_rslora: bool
) -> dict[str, Any]:
    """The adapter_config.json fields a LoRA spec decides, for checking before any file exists."""
    return {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": target_modules,
        "use_dora": use_dora,
        "use_rslora": use_rslora,
        "bias": "none",
    }
