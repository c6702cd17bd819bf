"""Smoke test for the shared fixtures: moto server reachable over HTTP, tiny model builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_api.spec import StorageSpec
from kubetune_trainer.storage import Storage


def test_stage_and_put_roundtrip(s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=b'{"text": "hi"}\n')
    storage = Storage(StorageSpec(endpoint=s3_endpoint, addressing_style="path"), tmp_path / "cache")
    local = storage.stage_file(f"s3://{bucket}/data/train.jsonl")
    assert local.read_bytes() == b'{"text": "hi"}\n'
    storage.put_bytes(b"x", f"s3://{bucket}/out/a.txt")
    assert s3_client.get_object(Bucket=bucket, Key="out/a.txt")["Body"].read() == b"x"


def test_tiny_model_builds(tiny_model_dir: Path) -> None:
    assert (tiny_model_dir / "config.json").exists()
    assert (tiny_model_dir / "tokenizer.json").exists()
