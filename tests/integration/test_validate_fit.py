"""`kubetune validate` plans memory, fit and time for the job's own GPUs (issue 11, item 5), from
config.json and the data only: the GPU type comes from resources.nodeSelector or --gpu-type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.protocol import PreflightReport
from kubetune_trainer.cli import kubetune

MANIFEST = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: fit
spec:
  baseModel:
    uri: file://{model}/
  dataset:
    train: ./train.jsonl
  training:
    epochs: 1
    maxSeqLength: 64
  output:
    uri: ./out/
  resources:
{resources}
"""


def validate(tmp_path: Path, model: Path, data: Path, resources: str, *flags: str) -> tuple[int, Any]:
    shutil.copy(data, tmp_path / "train.jsonl")
    job = tmp_path / "job.yaml"
    job.write_text(MANIFEST.format(model=model, resources=resources))
    return kubetune.main(["validate", str(job), "--cache-dir", str(tmp_path / "cache"), "--json", *flags]), job


def report(capsys: pytest.CaptureFixture[str]) -> PreflightReport:
    return PreflightReport.model_validate(json.loads(capsys.readouterr().out))


def test_a_gpu_job_gets_a_fit_plan_for_the_type_its_node_selector_names(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resources = "    gpus: 2\n    nodeSelector:\n      nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB"
    code, _ = validate(tmp_path, tiny_model_dir, numbers_path, resources)
    assert code == 0
    fit = report(capsys).fit
    assert fit is not None and fit.gpu_type == "A100-80GB" and fit.fits is True
    assert fit.job.gpus == 2 and fit.job.gpu_hours is not None and fit.wall_hours is not None
    assert not (tmp_path / "out").exists(), "validate writes nothing"


def test_gpu_type_flag_overrides_and_without_any_type_there_is_no_verdict(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, job = validate(tmp_path, tiny_model_dir, numbers_path, "    gpus: 1")
    assert code == 0
    fit = report(capsys).fit
    assert fit is not None and fit.gpu_type is None and fit.fits is None and fit.job.gpu_hours is None
    assert (
        kubetune.main(["validate", str(job), "--cache-dir", str(tmp_path / "cache"), "--json", "--gpu-type", "L4"]) == 0
    )
    fit = report(capsys).fit
    assert fit is not None and fit.gpu_type == "L4-24GB"


def test_a_cpu_job_has_no_fit_plan(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = validate(tmp_path, tiny_model_dir, numbers_path, "    gpus: 0")
    assert code == 0 and report(capsys).fit is None


def test_an_unknown_gpu_type_is_refused_with_the_flag_named(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = validate(tmp_path, tiny_model_dir, numbers_path, "    gpus: 1", "--gpu-type", "X100")
    assert code == 11
    err = capsys.readouterr().err
    assert "--gpu-type X100: not a GPU type kubetune knows" in err and "H100-80GB" in err


def test_the_table_shows_the_verdict_and_the_cheapest_fit(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resources = "    gpus: 1\n    nodeSelector:\n      cloud.google.com/gke-accelerator: nvidia-l4"
    shutil.copy(numbers_path, tmp_path / "train.jsonl")
    job = tmp_path / "job.yaml"
    job.write_text(MANIFEST.format(model=tiny_model_dir, resources=resources))
    assert kubetune.main(["validate", str(job), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "fit and time on L4-24GB" in out and "as written" in out and "fits;" in out


def test_fsdp_with_a_quantised_base_is_refused_with_the_field_named(
    tmp_path: Path, tiny_model_dir: Path, numbers_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(numbers_path, tmp_path / "train.jsonl")
    job = tmp_path / "job.yaml"
    text = MANIFEST.format(model=tiny_model_dir, resources="    gpus: 2")
    text = text.replace("  training:\n", "  lora:\n    quantization: 4bit\n  training:\n    sharding: fsdp\n")
    job.write_text(text)
    assert kubetune.main(["validate", str(job), "--cache-dir", str(tmp_path / "cache")]) == 11
    assert "training.sharding: fsdp cannot shard a quantised base (lora.quantization: 4bit)" in capsys.readouterr().err
