"""`kubetune run` with a generation metric, a gate and evaluation.groupBy writes the error analysis: the worst
validation rows by loss (with file:line), the answers the metric rejected, and per-group numbers, in eval.json,
manifest.json and the model card; a groupBy field no row has fails the data check, naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, write_jsonl
from kubetune_api.protocol import PreflightReport

pytestmark = pytest.mark.slow


def category(n: int) -> str:
    return "units" if n < 10 else "tens" if n < 100 else "hundreds"


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, numbers_path: Path) -> Path:
    workdir = tmp_path_factory.mktemp("error-analysis")
    rows = [json.loads(line) for line in numbers_path.read_text().splitlines()[:300]]
    write_jsonl(workdir / "numbers.jsonl", [{**row, "category": category(int(row["completion"]))} for row in rows])
    return workdir


def manifest(job_dir: Path, tiny_model_dir: Path, **evaluation: Any) -> Path:
    body = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "analysed"},
        "spec": {
            "baseModel": {"uri": f"file://{tiny_model_dir}/"},
            "dataset": {"train": "./numbers.jsonl", "validationSplit": 0.2},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "training": {"maxSteps": 20, "batchSize": 8, "maxSeqLength": 64, "learningRate": 3e-3,
                         "gradientCheckpointing": False, "seed": 7},
            "evaluation": {"exactMatch": True, "maxSamples": 40, "maxNewTokens": 5, **evaluation},
            "output": {"uri": "file://./out/"},
            "resources": {"gpus": 0},
        },
    }  # fmt: skip
    path = job_dir / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(str(ROOT / d) for d in ("api", "trainer"))
    return subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.cli.kubetune", *args],
        env={**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_kubetune_run_writes_the_error_analysis_and_the_gate_verdict(job_dir: Path, tiny_model_dir: Path) -> None:
    path = manifest(
        job_dir,
        tiny_model_dir,
        metric="numeric",
        numericTolerance={"absolute": 0.5},
        groupBy="category",
        worstRows=3,
        maxFailures=4,
        gate={"metric": "numeric", "threshold": 0.99},  # a tiny model after 20 steps: fails, and is published
    )
    result = kubetune("run", str(path), "--no-progress", "--overwrite")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "evaluation gate failed (the adapter is published anyway): ThresholdNotMet" in " ".join(
        result.stdout.split()
    )

    out = job_dir / "out"
    assert (out / "adapter_model.safetensors").is_file()  # published although the gate failed
    evals = json.loads((out / "eval.json").read_text())
    tuned = evals["finetuned"]
    assert tuned["metric"] == "numeric" and set(tuned["scores"]) == {
        "exact_match", "normalized_exact_match", "prefix_match", "numeric"
    }  # fmt: skip
    assert evals["gate"]["passed"] is False and evals["gate"]["reason"] == "ThresholdNotMet"
    assert evals["gate"]["value"] == tuned["scores"]["numeric"]

    analysis = evals["error_analysis"]
    worst = analysis["worst_rows"]
    assert len(worst) == 3 and worst[0]["loss"] >= worst[1]["loss"] >= worst[2]["loss"]
    for row in worst:  # file:line of a row that really has this prompt
        name, line = row["source"].split(":")
        assert name == "numbers.jsonl"
        source = json.loads((job_dir / "numbers.jsonl").read_text().splitlines()[int(line) - 1])
        assert (source["prompt"], source["completion"]) == (row["prompt"], row["completion"])
    assert analysis["metric"] == "numeric"
    assert analysis["failures_total"] == round((1 - tuned["scores"]["numeric"]) * tuned["samples"])
    assert 0 < len(analysis["failures"]) <= 4
    assert {"source", "prompt", "expected", "generated"} == set(analysis["failures"][0])
    groups = {g["value"]: g for g in analysis["groups"]}
    assert analysis["group_by"] == "category" and set(groups) <= {"units", "tens", "hundreds"}
    assert sum(g["rows"] for g in groups.values()) == 60  # every validation row in one group
    assert sum(g["samples"] for g in groups.values()) == 40
    assert all(0 < g["loss"] < 20 and 0 <= g["metric"] <= 1 for g in groups.values() if g["samples"])

    manifest_json = json.loads((out / "manifest.json").read_text())
    assert manifest_json["gate"] == evals["gate"]
    card = (out / "README.md").read_text()
    assert "## Evaluation gate" in card and "**failed** (ThresholdNotMet)" in card
    assert "## Error analysis" in card and "By `category`:" in card and worst[0]["source"] in card

    again = kubetune("run", str(path), "--no-progress")  # already complete: the verdict comes from the manifest
    assert again.returncode == 0 and "ThresholdNotMet" in again.stdout


def test_a_group_by_field_no_row_has_fails_the_data_check_naming_it(job_dir: Path, tiny_model_dir: Path) -> None:
    path = manifest(job_dir, tiny_model_dir, groupBy="categroy")
    result = kubetune("validate", str(path), "--json")
    assert result.returncode != 0
    assert result.stderr == (
        "error: DatasetInvalid (user error): evaluation.groupBy: no row of the validation split of "
        f"{job_dir / 'numbers.jsonl'} has the field 'categroy'; the rows' other keys: ['category']\n"
    )


def test_validate_accepts_the_same_job_with_the_right_field(job_dir: Path, tiny_model_dir: Path) -> None:
    result = kubetune("validate", str(manifest(job_dir, tiny_model_dir, groupBy="category")), "--json")
    assert result.returncode == 0, result.stderr
    assert PreflightReport.model_validate_json(result.stdout).data.validation_rows == 60
