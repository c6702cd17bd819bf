"""The trainer's storage layer against the real S3 server of the tests (SeaweedFS): round trips,
multipart objects through TransferConfig, and the read-only identity's 403."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from harness.seaweed import READER
from kubetune_api.spec import StorageSpec
from kubetune_trainer.errors import S3AccessDenied
from kubetune_trainer.storage import TRANSFER, Storage

MiB = 2**20


def test_stage_and_put_roundtrip(s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=b'{"text": "hi"}\n')
    storage = Storage(StorageSpec(endpoint=s3_endpoint, addressing_style="path"), tmp_path / "cache")
    local = storage.stage_file(f"s3://{bucket}/data/train.jsonl")
    assert local.read_bytes() == b'{"text": "hi"}\n'
    storage.put_bytes(b"x", f"s3://{bucket}/out/a.txt")
    assert s3_client.get_object(Bucket=bucket, Key="out/a.txt")["Body"].read() == b"x"


@pytest.mark.slow
def test_a_130_mib_object_goes_up_and_down_in_parts(
    s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """Above TransferConfig's 64 MiB threshold: a multipart upload (an AWS-style "-N" ETag, so no
    MD5 to check), then a ranged, parallel download that still matches byte for byte."""
    big = tmp_path / "shard.safetensors"
    with big.open("wb") as fh:
        for _ in range(130):
            fh.write(os.urandom(MiB))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    storage = Storage(StorageSpec(endpoint=s3_endpoint, addressing_style="path"), tmp_path / "cache")
    uri = f"s3://{bucket}/models/big/model.safetensors"
    storage.put_file(big, uri)
    head = s3_client.head_object(Bucket=bucket, Key="models/big/model.safetensors")
    parts = -(-130 * MiB // TRANSFER.multipart_chunksize)
    assert head["ContentLength"] == 130 * MiB and head["ETag"].strip('"').endswith(f"-{parts}"), head["ETag"]
    staged = storage.stage_dir(f"s3://{bucket}/models/big/")
    assert hashlib.sha256((staged / "model.safetensors").read_bytes()).hexdigest() == digest


def test_the_read_only_identity_reads_but_cannot_write_the_output(
    s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=b'{"text": "hi"}\n')
    for key, value in READER.env.items():
        monkeypatch.setenv(key, value)
    storage = Storage(StorageSpec(endpoint=s3_endpoint, addressing_style="path"), tmp_path / "cache")
    assert storage.stage_file(f"s3://{bucket}/data/train.jsonl").read_bytes() == b'{"text": "hi"}\n'
    with pytest.raises(S3AccessDenied, match=rf"^s3://{bucket}/out/: the output cannot be written: access denied"):
        storage.check_writable(f"s3://{bucket}/out/")
    assert "out/" not in {o["Key"][:4] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_tiny_model_builds(tiny_model_dir: Path) -> None:
    assert (tiny_model_dir / "config.json").exists()
    assert (tiny_model_dir / "tokenizer.json").exists()
