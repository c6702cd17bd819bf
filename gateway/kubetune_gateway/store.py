"""Uploaded files in the tenant's own bucket: `<filesUri><file id>.jsonl` and `<file id>.json` (its
metadata, a FileRecord), so GET and list need no database. boto3, off the event loop.

The server uses its own credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or its service
account's identity, boto3's usual chain) and the tenant's endpoint, region and addressing style.
The trainer reads the same objects with the tenant's credentialsSecret.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kubetune_api.spec import StorageSpec
from kubetune_gateway.config import Tenant, split_s3
from kubetune_gateway.errors import SERVER_ERROR, ApiError
from kubetune_gateway.mapping import FileRecord

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")
MISSING = {"404", "NoSuchKey", "NotFound"}


class FileStore:
    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self._clients: dict[tuple[str | None, str | None, str], S3Client] = {}
        self._lock = threading.Lock()

    def _client(self, storage: StorageSpec) -> S3Client:
        key = (storage.endpoint, storage.region, storage.addressing_style)
        with self._lock:  # boto3 clients are thread-safe once made; making one is not
            if key not in self._clients:
                self._clients[key] = boto3.session.Session().client(
                    "s3",
                    endpoint_url=storage.endpoint,
                    region_name=storage.region,
                    config=Config(
                        s3={"addressing_style": storage.addressing_style},
                        retries={"mode": "standard", "max_attempts": 5},
                        connect_timeout=10,
                        read_timeout=60,
                    ),
                )
            return self._clients[key]

    async def _call(self, tenant: Tenant, what: str, fn: Callable[[S3Client], T]) -> T:
        client = self._client(tenant.storage)

        def run() -> T:
            try:
                return fn(client)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
                raise ApiError(502, f"The file store answered {code} for {what}.", type_=SERVER_ERROR) from exc
            except BotoCoreError as exc:
                raise ApiError(502, f"The file store is unreachable for {what}: {exc}", type_=SERVER_ERROR) from exc

        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    @staticmethod
    def _keys(tenant: Tenant, file_id: str) -> tuple[str, str, str]:
        bucket, prefix = split_s3(tenant.files_uri)
        return bucket, f"{prefix}{file_id}.jsonl", f"{prefix}{file_id}.json"

    async def put(self, tenant: Tenant, record: FileRecord, path: Path) -> None:
        """The data first, then the record: a file is listed only once its data is complete."""
        bucket, data_key, record_key = self._keys(tenant, record.id)

        def put(client: S3Client) -> None:
            client.upload_file(str(path), bucket, data_key)
            client.put_object(
                Bucket=bucket, Key=record_key, Body=record.model_dump_json().encode(), ContentType="application/json"
            )

        await self._call(tenant, f"{tenant.files_uri}{record.id}.jsonl", put)

    async def record(self, tenant: Tenant, file_id: str) -> FileRecord | None:
        bucket, _, record_key = self._keys(tenant, file_id)

        def get(client: S3Client) -> FileRecord | None:
            try:
                body = client.get_object(Bucket=bucket, Key=record_key)["Body"].read()
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in MISSING:
                    return None
                raise
            return FileRecord.model_validate(json.loads(body))

        return await self._call(tenant, f"{tenant.files_uri}{file_id}.json", get)

    async def file_ids(self, tenant: Tenant) -> list[str]:
        """Every stored file's id, newest first (by its record's upload time)."""
        bucket, prefix = split_s3(tenant.files_uri)

        def listing(client: S3Client) -> list[str]:
            found: list[tuple[Any, str]] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix) :]
                    if "/" not in name and name.endswith(".json"):
                        found.append((obj["LastModified"], name.removesuffix(".json")))
            return [file_id for _, file_id in sorted(found, reverse=True)]

        return await self._call(tenant, tenant.files_uri, listing)

    async def content(self, tenant: Tenant, file_id: str) -> bytes:
        bucket, data_key, _ = self._keys(tenant, file_id)
        return await self._call(
            tenant,
            f"{tenant.files_uri}{file_id}.jsonl",
            lambda client: client.get_object(Bucket=bucket, Key=data_key)["Body"].read(),
        )

    async def delete(self, tenant: Tenant, file_id: str) -> None:
        """The record first: a half-deleted file is no longer listed."""
        bucket, data_key, record_key = self._keys(tenant, file_id)

        def delete(client: S3Client) -> None:
            client.delete_object(Bucket=bucket, Key=record_key)
            client.delete_object(Bucket=bucket, Key=data_key)

        await self._call(tenant, f"{tenant.files_uri}{file_id}.jsonl", delete)
