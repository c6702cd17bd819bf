"""S3 faults at the rate a real endpoint has them, and a hard outage, through a proxy of the tests.

The trainer runs as a process, pointed at a faulty proxy in front of the real S3 server
(harness/s3_proxy.py), exactly as at any S3 endpoint: nothing in boto3 is patched.

- 10 % of requests (seeded) get a 503/500, a connection reset or a 1 s delay. Staging, every
  checkpoint and the publish still succeed: boto3's standard retry mode (5 attempts, connect
  timeout 10 s, read timeout 120 s; storage.py) absorbs them.
- A hard outage after the first checkpoint fails the run with StorageError (exit 21, retried by
  the operator) and leaves nothing final behind: no manifest, no adapter, and every checkpoint
  that counts (marked complete) is whole. Once S3 is back, the next run resumes from the last
  complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import keys_under, trainer_config, trainer_process
from harness.s3_proxy import CountingS3Proxy, FaultPlan
from kubetune_api.protocol import FailureReason, RunStatus, RunSummary

pytestmark = [pytest.mark.slow, pytest.mark.s3]

FAULT_RATE = 0.10


def start_trainer(
    tmp_path: Path, name: str, staged_on_s3: dict[str, str], bucket: str, endpoint: str, env: dict[str, str], steps: int
) -> tuple[subprocess.Popen[str], Path]:
    run_dir = tmp_path / name
    run_dir.mkdir()
    config = trainer_config(
        staged_on_s3["model"],
        staged_on_s3["train"],
        f"s3://{bucket}/out/",
        cache_dir=run_dir / "cache",
        endpoint=endpoint,
        training={"max_steps": steps, "checkpoint_every_steps": 10, "keep_checkpoints": 2},
        runtime={"cache_dir": str(run_dir / "cache"), "termination_message_path": str(run_dir / "term")},
    )
    (run_dir / "trainer.json").write_text(json.dumps(config))
    proc = trainer_process(run_dir / "trainer.json", env, merge_output=True)
    return proc, run_dir / "term"


def complete_checkpoints(s3_client: Any, bucket: str) -> dict[int, set[str]]:
    """Checkpoint step -> its files, for the checkpoints marked complete."""
    by_step: dict[int, set[str]] = {}
    for key in keys_under(s3_client, bucket, "out/checkpoints"):
        folder, _, file = key.partition("/")
        by_step.setdefault(int(folder.removeprefix("step-")), set()).add(file)
    return {step: files for step, files in by_step.items() if "COMPLETE" in files}


def test_staging_checkpoints_and_publish_survive_ten_percent_faults(
    staged_on_s3: dict[str, str], s3_endpoint: str, s3_env: dict[str, str], s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    with CountingS3Proxy(s3_endpoint, FaultPlan(rate=FAULT_RATE, seed=11)) as proxy:
        proc, term = start_trainer(tmp_path, "faulty", staged_on_s3, bucket, proxy.endpoint, s3_env, steps=40)
        output, _ = proc.communicate(timeout=600)
        requests, injected = len(proxy.requests), proxy.injected()
    assert proc.returncode == 0, output[-4000:]
    summary = RunSummary.model_validate_json(term.read_text())
    assert summary.status == RunStatus.SUCCEEDED and summary.step == 40

    published = keys_under(s3_client, bucket, "out")
    assert {"manifest.json", "adapter_model.safetensors", "adapter_config.json", "metrics.json"} <= published
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key="out/manifest.json")["Body"].read())
    for name, digest in manifest["artifacts"].items():  # every published file is whole
        body = s3_client.get_object(Bucket=bucket, Key=f"out/{name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest["sha256"], name
    assert max(complete_checkpoints(s3_client, bucket)) == 40

    # Every kind was injected, at about the asked rate; each 5xx and reset cost boto3 one retry.
    assert all(injected.get(kind, 0) > 0 for kind in ("5xx", "reset", "slow")), injected
    faults = sum(injected.values())
    assert 0.04 < faults / requests < 0.2, (faults, requests)
    print(
        f"\nS3 faults: {requests} requests, {faults} faults injected {dict(sorted(injected.items()))}, "
        f"{injected['5xx'] + injected['reset']} retried by boto3, outcome: Succeeded at step {summary.step}"
    )


def test_a_hard_outage_fails_with_storage_error_and_the_next_run_resumes_from_the_last_complete_checkpoint(
    staged_on_s3: dict[str, str], s3_endpoint: str, s3_env: dict[str, str], s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    with CountingS3Proxy(s3_endpoint) as proxy:
        proc, term = start_trainer(tmp_path, "outage", staged_on_s3, bucket, proxy.endpoint, s3_env, steps=400)
        deadline = time.monotonic() + 300
        while not complete_checkpoints(s3_client, bucket):
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        proxy.outage = True
        output, _ = proc.communicate(timeout=300)
        refused = proxy.injected().get("outage", 0)
    assert proc.returncode == 21, output[-4000:]
    failure = RunSummary.model_validate_json(term.read_text())
    assert failure.reason == FailureReason.STORAGE_ERROR and failure.status == RunStatus.FAILED
    assert failure.message and "s3://" in failure.message, failure.message
    assert refused > 0

    # Nothing final is half-written: no publish at all, and the checkpoints that count are whole.
    left = keys_under(s3_client, bucket, "out")
    assert not {"manifest.json", "adapter_model.safetensors", "metrics.json"} & left, sorted(left)
    survivors = complete_checkpoints(s3_client, bucket)
    assert survivors
    whole = survivors[min(survivors)]
    assert all(files == whole for files in survivors.values()), survivors
    last = max(survivors)

    # S3 is back: the next attempt resumes from the last complete checkpoint and finishes.
    with CountingS3Proxy(s3_endpoint) as proxy:
        proc, term = start_trainer(tmp_path, "recovered", staged_on_s3, bucket, proxy.endpoint, s3_env, steps=400)
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    assert f"resumed from checkpoint step {last}" in output, output[-4000:]
    assert "manifest.json" in keys_under(s3_client, bucket, "out")
