"""Shared fixtures: a tiny real model, the quickstart data, and real S3 servers (SeaweedFS) on 127.0.0.1.

Nothing here patches boto3: the trainer talks HTTP to a SeaweedFS process, exactly as it talks to
MinIO or AWS. The test credentials are SeaweedFS's admin identity; harness.seaweed.READER is a
read-only one, for the 403 cases.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from harness.seaweed import ADMIN, OWNER, READER, SeaweedS3

# kube_api, kube_cluster: the kmock Kubernetes API and the test kubelet (tests/harness/).
pytest_plugins = ["harness.fixtures"]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
sys.path.insert(0, str(QUICKSTART))

FAKE_CREDENTIALS = {**ADMIN.env, "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API (SeaweedFS, with IAM identities) on 127.0.0.1, shared by the session."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server.endpoint


@pytest.fixture(scope="session")
def denying_s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 API that does not know the test credentials: every request gets 403 InvalidAccessKeyId."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs-denying"), identities=(READER, OWNER)) as server:
        # Someone else's bucket: SeaweedFS answers 404 for a missing bucket before it checks the
        # signature, where AWS says 403; with the bucket there, both refuse the credentials.
        server.client(OWNER).create_bucket(Bucket="kubetune-private")
        yield server.endpoint


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials for the S3 server, in this process's env and ready for subprocesses."""
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return {**FAKE_CREDENTIALS}


@pytest.fixture
def s3_client(s3_endpoint: str, s3_env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh, empty bucket per test."""
    name = f"kt-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def upload_dir(client: Any, local: Path, bucket: str, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}")


def keys_under(client: Any, bucket: str, prefix: str) -> set[str]:
    """Every key below `prefix/`, relative to it."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {obj["Key"][len(prefix) + 1 :] for page in pages for obj in page.get("Contents", [])}


def upload_tiny_job(client: Any, model_dir: Path, bucket: str) -> dict[str, str]:
    """A model (at models/tiny/) and the quickstart data (data/numbers.jsonl) in `bucket`: their URIs."""
    upload_dir(client, model_dir, bucket, "models/tiny")
    client.upload_file(str(QUICKSTART / "numbers.jsonl"), bucket, "data/numbers.jsonl")
    return {"model": f"s3://{bucket}/models/tiny/", "train": f"s3://{bucket}/data/numbers.jsonl"}


@pytest.fixture
def staged_on_s3(s3_client: Any, bucket: str, tiny_model_dir: Path) -> dict[str, str]:
    """The tiny model and the quickstart data uploaded to the test's bucket, as a user would have them."""
    return upload_tiny_job(s3_client, tiny_model_dir, bucket)


def trainer_process(config_path: Path, env: dict[str, str], merge_output: bool = False) -> subprocess.Popen[str]:
    """`kubetune-train --config` as the pod runs it, in a subprocess; `merge_output`: stderr into stdout."""
    pythonpath = os.pathsep.join(str(ROOT / d) for d in ("api", "trainer"))
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.cli.kubetune_train", "--config", str(config_path)],
        # One thread each: tests run several trainers at once on a 2-core machine.
        env={**os.environ, **env, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide Llama with the quickstart BPE tokenizer, saved with save_pretrained."""
    from build_base_model import build

    return build(tmp_path_factory.mktemp("tiny-model"), hidden=64, layers=2)


@pytest.fixture(scope="session")
def numbers_path() -> Path:
    return QUICKSTART / "numbers.jsonl"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def trainer_config(
    model_uri: str,
    train_uri: str,
    output_uri: str,
    *,
    cache_dir: Path,
    endpoint: str | None = None,
    training: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A small, fast TrainerConfig (as a dict, the way trainer.json holds it)."""
    config: dict[str, Any] = {
        "job_name": "test-job",
        "namespace": "default",
        "base_model_uri": model_uri,
        "dataset": {"train": train_uri, "format": "auto", "validation_split": 0.1},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["all-linear"]},
        "training": {
            "epochs": 2,
            "learning_rate": 3e-3,
            "batch_size": 4,
            "max_seq_length": 64,
            "gradient_checkpointing": False,
            "checkpoint_every_steps": 5,
            "seed": 7,
            **(training or {}),
        },
        "evaluation": {"exact_match": False},
        "output": {"uri": output_uri},
        "storage": {"endpoint": endpoint, "addressing_style": "path"} if endpoint else {},
        "runtime": {"cache_dir": str(cache_dir), "progress_bar": False},
    }
    config.update(overrides)
    return config
