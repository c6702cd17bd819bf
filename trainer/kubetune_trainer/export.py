"""Final artifacts: adapter, tokenizer, metrics, eval, loss curve, model card, manifest.

Everything is written to a local folder first and then published file by file; each file
is atomic and manifest.json goes last, so a reader who sees the manifest sees a complete
result, and a failed export leaves no manifest.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_api.protocol import DataStats, Evaluations, GateResult, ModelReport, RunStatus, RunSummary, StepPlan
from kubetune_api.status import rfc3339
from kubetune_api.trainer_config import TrainerConfig
from kubetune_trainer.errors import ExportFailed, KubetuneError
from kubetune_trainer.serving import ServingHandoff, serving_handoff
from kubetune_trainer.storage import Storage, parse_uri, sha256_file

if TYPE_CHECKING:  # both import torch; the functions here only read their fields
    from kubetune_trainer.checkpoint import TrainState
    from kubetune_trainer.modeling import Numerics

MANIFEST = "manifest.json"
LIBRARIES = ("kubetune", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors")


@dataclass(frozen=True)
class ExportResult:
    adapter_uri: str
    manifest_uri: str
    files: list[str]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def existing_result(storage: Storage, config: TrainerConfig) -> RunSummary | None:
    """A finished run at this output is reported, not redone: reruns are idempotent."""
    manifest_uri = parse_uri(config.output.uri).join(MANIFEST).uri
    text = storage.read_text_uncached(manifest_uri)
    if text is None:
        return None
    manifest = json.loads(text)
    training = manifest.get("training", {})
    return RunSummary(
        status=RunStatus.SUCCEEDED,
        job=config.job_name,
        step=training.get("steps", 0),
        total_steps=training.get("steps", 0),
        trained_tokens=training.get("trainedTokens", 0),
        eval=Evaluations.model_validate(manifest.get("eval") or {}),
        gate=GateResult.model_validate(manifest["gate"]) if manifest.get("gate") else None,
        adapter_uri=config.output.uri,
        manifest_uri=manifest_uri,
        already_complete=True,
    )


def check_serving(out: Path, config: TrainerConfig, model_type: str | None) -> ServingHandoff:
    """The saved adapter checked against vLLM's loader, and the snippets that serve its published copy."""
    return serving_handoff(
        out,
        model_type,
        job=config.job_name,
        base_model_uri=config.base_model_uri,
        adapter_uri=parse_uri(config.output.uri).uri,  # what publish() reports as the adapter's URI
        storage_endpoint=config.storage.endpoint,
        merged=config.output.merge_adapter,
    )


def write_reports(
    out: Path,
    config: TrainerConfig,
    state: TrainState,
    stats: DataStats,
    evals: dict[str, dict[str, Any]],
    serving: ServingHandoff | None = None,
) -> None:
    """metrics.json, eval.json (with the generated examples, the gate's verdict and the error
    analysis), the loss curve and the model card."""
    metrics = {"loss_curve": state.loss_history, "data": stats.model_dump(by_alias=False)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "eval.json").write_text(json.dumps(evals, indent=2))
    write_loss_curve(state.loss_history, evals, out / "loss_curve.png")
    card = model_card(
        config.job_name, config.base_model_uri, config.dataset.train, config.lora.model_dump(), evals, serving=serving
    )
    (out / "README.md").write_text(card)


def build_manifest(
    config: TrainerConfig,
    *,
    state: TrainState,
    plan: StepPlan,
    numerics: Numerics,
    model_report: ModelReport,
    device: str,
    processes: int,
    sharding: str,
    model_fingerprint: dict[str, Any],
    data_fingerprints: list[dict[str, Any]],
    stats: DataStats,
    evaluations: Evaluations,
    timings: dict[str, float],
    gate: GateResult | None = None,
    serving: ServingHandoff | None = None,
) -> dict[str, Any]:
    """The provenance record (manifest.json) before `publish` adds the artifacts' hashes."""
    return {
        "kind": "kubetune.io/FineTuneJobResult",
        "job": {"name": config.job_name, "namespace": config.namespace, "attempt": state.attempt},
        "baseModel": {
            "uri": config.base_model_uri,
            "modelType": model_report.model_type,
            "architecture": model_report.architecture,
            "sha256": model_fingerprint["sha256"],
            "files": model_fingerprint["files"],
        },
        "datasets": data_fingerprints,
        "config": json.loads(config.model_dump_json(exclude={"runtime"})),
        "training": {
            "steps": state.step,
            "epochs": plan.epochs,
            "batchSize": plan.batch_size,
            "trainedTokens": state.trained_tokens,
            "precision": numerics.mixed_precision,
            "attention": model_report.attention,
            "packing": model_report.packing.to_wire() if model_report.packing else None,
            "device": device,
            "processes": processes,
            "sharding": sharding,  # single, ddp or fsdp, as run (training.sharding resolved)
        },
        "data": stats.model_dump(by_alias=False),
        "eval": evaluations.model_dump(mode="json", by_alias=False, exclude_none=True),
        # The adapter is published whether it passed or not; this says which.
        "gate": gate.model_dump(mode="json", by_alias=False, exclude_none=True) if gate else None,
        "timingsSeconds": {**timings, "trainingTotal": round(state.elapsed_seconds, 3)},
        "libraries": library_versions(),
        **({"serving": {"vllm": serving.check.to_manifest()}} if serving else {}),
    }


def write_loss_curve(history: list[dict[str, float]], evals: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss", lw=1.4)
    for key, style in (("baseline", "--"), ("finetuned", ":")):
        loss = (evals.get(key) or {}).get("loss")
        if loss is not None:
            ax.axhline(loss, ls=style, color="gray" if key == "baseline" else "green", label=f"{key} eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per trainable token)")
    ax.set_title("kubetune training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _code(language: str, text: str) -> str:
    return f"```{language}\n{text.rstrip()}\n```"


_S3_COPY = ("vLLM reads local directories, not s3:// URIs: the copy steps come first.", "")
_LOCAL_URIS = ("KServe cannot fetch file:// URIs: copy the model and adapter to a bucket or a volume first.",)


def serving_section(serving: ServingHandoff | None) -> str:
    """The model card's "Serving" section: the vLLM check's verdict and ready-to-run snippets."""
    if serving is None:
        return ""
    check, snippets = serving.check, serving.snippets
    parts = ["## Serving", ""]
    if check.compatible is not False:
        verdict = "accepts this adapter" if check.compatible else "breaks none of its rules for this adapter"
        parts.append(
            f"vLLM's LoRA loader {verdict} (rank {check.rank}: start vLLM with "
            f"`--max-lora-rank {check.max_lora_rank}`). The rules checked are listed in kubetune's docs/serving.md."
        )
    else:
        parts.append("> **Warning: vLLM cannot serve this adapter as a LoRA.**")
        parts.extend(f"> - {problem}" for problem in check.problems)
        parts.append(
            "> Merge it into the base (`output.mergeAdapter: true`) and serve the merged weights, "
            "or retrain without the feature named above (for example `lora.useDora: false`)."
        )
    parts.extend(f"\nNote: {note}." for note in check.notes)
    if snippets.vllm_command and snippets.kserve_inference_service:
        parts += [
            "",
            "### vLLM",
            "",
            *(_S3_COPY if "aws s3 sync" in snippets.vllm_command else ()),
            _code("bash", snippets.vllm_command),
            "",
            "### KServe",
            "",
            "Hugging Face serving runtime (vLLM backend); the storage initializer fetches both URIs "
            "(`storageUris`), with the S3 credentials of the predictor's service account.",
            *(_LOCAL_URIS if "file://" in snippets.kserve_inference_service else ()),
            "",
            _code("yaml", snippets.kserve_inference_service),
        ]
    if snippets.merged_vllm_command and snippets.merged_kserve_inference_service:
        parts += [
            "",
            "### Merged weights (no LoRA)",
            "",
            "`merged/` holds the base with this adapter merged in: serve it as a plain model.",
            "",
            _code("bash", snippets.merged_vllm_command),
            "",
            _code("yaml", snippets.merged_kserve_inference_service),
        ]
    return "\n".join(parts) + "\n"


def model_card(
    job: str,
    base_model: str,
    dataset: str,
    lora: dict[str, Any],
    evals: dict[str, Any],
    serving: ServingHandoff | None = None,
) -> str:
    base, tuned = evals.get("baseline") or {}, evals.get("finetuned") or {}
    rows = [
        ("eval loss", _fmt(base.get("loss")), _fmt(tuned.get("loss"))),
        ("perplexity", _fmt(base.get("perplexity"), ".2f"), _fmt(tuned.get("perplexity"), ".2f")),
    ]
    if "exact_match" in tuned:
        rows.append(("exact match", _fmt(base.get("exact_match"), ".1%"), _fmt(tuned.get("exact_match"), ".1%")))
    rows += generation_metric_rows(base, tuned)
    table = "\n".join(f"| {name} | {b} | {t} |" for name, b, t in rows)
    return f"""---
library_name: peft
base_model: {base_model}
tags: [lora, kubetune]
---

# {job}: LoRA adapter

Trained by kubetune from `{base_model}` on `{dataset}`.

| metric | base model | fine-tuned |
|---|---|---|
{table}

LoRA: r={lora.get("r")}, alpha={lora.get("alpha")}, dropout={lora.get("dropout")},
targets={lora.get("target_modules")}.
{evaluation_sections(evals)}
## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("<base model dir>")
model = PeftModel.from_pretrained(base, "<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

{serving_section(serving)}
Provenance (data and model fingerprints, config, library versions) is in `manifest.json`;
the loss curve is `loss_curve.png`, metrics per step are in `metrics.json`.
"""


def generation_metric_rows(base: dict[str, Any], tuned: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The model card's rows for the generation metrics other than exact match (shown above)."""
    base_scores, tuned_scores = base.get("scores") or {}, tuned.get("scores") or {}
    return [
        (name.replace("_", " "), _fmt(base_scores.get(name), ".1%"), _fmt(value, ".1%"))
        for name, value in tuned_scores.items()
        if name != "exact_match"
    ]


def _cell(text: str, limit: int = 80) -> str:
    """Text for one Markdown table cell: one line, pipes escaped, bounded."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def evaluation_sections(evals: dict[str, Any]) -> str:
    """The model card's "Evaluation gate" and "Error analysis" sections, from eval.json's content."""
    parts: list[str] = []
    gate = evals.get("gate")
    if gate:
        verdict = "**passed**" if gate["passed"] else "**failed**"
        parts.append(
            f"\n## Evaluation gate\n\nThe gate on `{gate['metric']}` {verdict} ({gate['reason']}): {gate['message']}.\n"
            "The adapter is published either way; `manifest.json` and `eval.json` record the verdict.\n"
        )
    analysis = evals.get("error_analysis")
    if not analysis:
        return "".join(parts)
    parts.append("\n## Error analysis\n")
    worst = analysis.get("worst_rows") or []
    if worst:
        parts.append("\nValidation rows with the highest loss (fine-tuned model, per trainable token):\n\n")
        parts.append("| row | loss | tokens |\n|---|---|---|\n")
        parts.extend(f"| `{_cell(w['source'])}` | {w['loss']:.4f} | {w['tokens']} |\n" for w in worst)
    failures = analysis.get("failures")
    if failures is not None:
        total = analysis.get("failures_total", len(failures))
        parts.append(f"\nAnswers `{analysis.get('metric')}` rejected: {total}")
        parts.append(f" (the first {len(failures)} below).\n" if failures and total > len(failures) else ".\n")
        if failures:
            parts.append("\n| row | expected | generated |\n|---|---|---|\n")
            parts.extend(
                f"| `{_cell(f['source'])}` | {_cell(f['expected'])} | {_cell(f['generated'])} |\n" for f in failures
            )
    groups = analysis.get("groups")
    if groups:
        metric = analysis.get("metric") or "metric"
        parts.append(f"\nBy `{analysis['group_by']}`:\n\n| {_cell(analysis['group_by'])} | rows | loss | {metric} |\n")
        parts.append("|---|---|---|---|\n")
        parts.extend(
            f"| {_cell(g['value'])} | {g['rows']} | {_fmt(g['loss'])} | {_fmt(g.get('metric'), '.1%')} |\n"
            for g in groups
        )
    parts.append("\nThe full analysis, with the prompts, is in `eval.json` (`error_analysis`).\n")
    return "".join(parts)


def publish(
    storage: Storage,
    local_dir: Path,
    output_uri: str,
    manifest: dict[str, Any],
) -> ExportResult:
    """Upload every file in `local_dir`, then manifest.json (with the files' hashes) last."""
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    manifest = {
        **manifest,
        "artifacts": {
            name: {"sha256": sha256_file(local_dir / name), "size": (local_dir / name).stat().st_size}
            for name in files
            if name != MANIFEST
        },
        "completedAt": rfc3339(datetime.now(UTC)),
    }
    (local_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    try:
        storage.put_dir(local_dir, output_uri, last=(MANIFEST,))
    except KubetuneError:
        raise
    except Exception as exc:  # anything unexpected while publishing is an export failure
        raise ExportFailed(f"{output_uri}: publishing artifacts failed: {exc}") from exc
    base = parse_uri(output_uri)
    return ExportResult(adapter_uri=base.uri, manifest_uri=base.join(MANIFEST).uri, files=[*files, MANIFEST])
