"""Shared fixtures: a tiny real model, the quickstart data, and real S3 servers (moto) on 127.0.0.1.

Nothing here patches boto3: the trainer talks HTTP to a moto server process, exactly as it
talks to MinIO or AWS.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

# kube_api, kube_cluster: the kmock Kubernetes API and the test kubelet (tests/harness/).
pytest_plugins = ["harness.fixtures"]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
sys.path.insert(0, str(QUICKSTART))

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, **FAKE_CREDENTIALS, **(extra_env or {})}
    moto_server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto server) on 127.0.0.1, shared by the session."""
    proc, endpoint = start_moto()
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def denying_s3_endpoint() -> Iterator[str]:
    """An S3 API that enforces IAM: unknown access keys get 403 InvalidAccessKeyId."""
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials for the moto server, in this process's env and ready for subprocesses."""
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
