"""Reading and writing URIs: s3://, file://, pvc:// and plain local paths.

Downloads land in a content-addressed cache (key = URI + ETag + size) and are
verified before they are used. Uploads are atomic per object: S3 PutObject and
CompleteMultipartUpload publish a whole object or nothing, and local writes go
through a temporary file and `os.replace`. Credentials come only from boto3's
default chain (env vars from a Secret, IRSA web identity, instance profile);
they are never part of the config.

A folder of several files (a checkpoint, a cached model directory) is whole only once its
`COMPLETE` marker exists (`Storage.mark_complete` / `Storage.is_complete`). The marker is
written after every other file, so a kill at any moment leaves either a complete folder or
one without a marker, which readers ignore and writers redo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from kubetune_api.spec import StorageSpec
from kubetune_trainer.cache import DownloadCache
from kubetune_trainer.errors import InvalidSpec, KubetuneError, NotFound, S3AccessDenied, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"
MiB = 1024 * 1024
# Parallel multipart for big weight files; small files go in one request.
TRANSFER = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=8)
COMPLETE_MARKER = "COMPLETE"


@dataclass(frozen=True)
class Location:
    """A parsed URI: either an S3 object/prefix or a local filesystem path."""

    uri: str
    bucket: str | None = None
    key: str = ""
    path: Path | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def join(self, *parts: str) -> Location:
        suffix = "/".join(p.strip("/") for p in parts if p)
        if self.is_s3:
            key = f"{self.key.rstrip('/')}/{suffix}" if self.key.strip("/") else suffix
            return Location(uri=f"s3://{self.bucket}/{key}", bucket=self.bucket, key=key)
        assert self.path is not None
        path = self.path.joinpath(*[p.strip("/") for p in parts if p])
        scheme = "file://" if self.uri.startswith("file://") else ""
        return Location(uri=f"{scheme}{path}", path=path)


def parse_uri(uri: str) -> Location:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidSpec(f"{uri}: s3:// URI has no bucket")
        return Location(uri=uri, bucket=parsed.netloc, key=parsed.path.lstrip("/"))
    if parsed.scheme == "file":
        return Location(uri=uri, path=Path(unquote(parsed.netloc + parsed.path)))
    if parsed.scheme == "pvc":
        # The operator mounts claim `name` at $KUBETUNE_PVC_ROOT/name.
        root = Path(os.environ.get(PVC_ROOT_ENV, "/mnt/pvc"))
        return Location(uri=uri, path=root / parsed.netloc / parsed.path.lstrip("/"))
    if parsed.scheme == "":
        return Location(uri=uri, path=Path(uri).expanduser())
    raise InvalidSpec(f"{uri}: unsupported URI scheme {parsed.scheme!r} (use s3://, file://, pvc:// or a path)")


def _s3_error(exc: Exception, uri: str) -> KubetuneError:
    """Classify a botocore failure: 403/404 are the user's to fix, the rest is infrastructure."""
    if isinstance(exc, boto3.exceptions.S3UploadFailedError):
        # upload_file wraps the ClientError; classify what it wraps.
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, Exception) and not isinstance(inner, boto3.exceptions.S3UploadFailedError):
            return _s3_error(inner, uri)
        text = str(exc)
        for code, error in (("NoSuchBucket", NotFound), ("AccessDenied", S3AccessDenied), ("403", S3AccessDenied)):
            if code in text:
                return error(f"{uri}: {text}")
        return StorageError(f"{uri}: {text}")
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or status == 403:
            return S3AccessDenied(f"{uri}: access denied by S3 ({code}); check the credentials Secret or IAM role")
        if code in {"NoSuchKey", "NoSuchBucket", "404", "NotFound"} or status == 404:
            return NotFound(f"{uri}: does not exist ({code})")
        return StorageError(f"{uri}: S3 error {code} (HTTP {status})")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return S3AccessDenied(f"{uri}: no S3 credentials found (set storage.credentialsSecret or a pod identity)")
    return StorageError(f"{uri}: {type(exc).__name__}: {exc}")


def _md5(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fingerprint_dir(path: Path) -> dict[str, Any]:
    """sha256 and size of every file under `path`, and one sha256 over that listing."""
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
    listing = {name: {"sha256": sha256_file(p), "size": p.stat().st_size} for name, p in files.items()}
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "files": listing}


def _atomic_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        Path(tmp).replace(dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str


class Storage:
    """One object per run: an S3 client (created on first use) and the download cache."""

    def __init__(
        self,
        spec: StorageSpec | None = None,
        cache_dir: str | Path = "~/.cache/kubetune",
        cache_size_limit_bytes: int | None = None,
    ) -> None:
        self.spec = spec or StorageSpec()
        self.cache_dir = Path(cache_dir).expanduser()
        # Locked, atomically published entries with an LRU cap (cache.py): the cache may be a PVC
        # shared with other pods and attempts.
        self.cache = DownloadCache(self.cache_dir / "objects", cache_size_limit_bytes)
        self._client: S3Client | None = None

    # -- S3 plumbing -------------------------------------------------------------------------
    @property
    def s3(self) -> S3Client:
        if self._client is None:
            config = botocore.config.Config(
                s3={"addressing_style": self.spec.addressing_style},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
                max_pool_connections=32,
            )
            region = self.spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.spec.endpoint or None,  # None lets AWS_ENDPOINT_URL apply
                region_name=region or "us-east-1",
                config=config,
            )
        return self._client

    @contextmanager
    def _s3_call(self, uri: str) -> Iterator[None]:
        try:
            yield
        except KubetuneError:
            raise
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            boto3.exceptions.S3UploadFailedError,
        ) as exc:
            raise _s3_error(exc, uri) from exc

    def _head(self, loc: Location) -> RemoteObject:
        assert loc.bucket is not None
        with self._s3_call(loc.uri):
            head = self.s3.head_object(Bucket=loc.bucket, Key=loc.key)
        return RemoteObject(key=loc.key, size=int(head["ContentLength"]), etag=str(head["ETag"]).strip('"'))

    def _list(self, loc: Location) -> list[RemoteObject]:
        assert loc.bucket is not None
        prefix = loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""
        found: list[RemoteObject] = []
        with self._s3_call(loc.uri):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    found.append(RemoteObject(obj["Key"], int(obj["Size"]), str(obj["ETag"]).strip('"')))
        return found

    def _download(self, loc: Location, obj: RemoteObject, dest: Path) -> None:
        assert loc.bucket is not None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        uri = f"s3://{loc.bucket}/{obj.key}"
        with self._s3_call(uri):
            self.s3.download_file(loc.bucket, obj.key, str(tmp), Config=TRANSFER)
        self._verify(tmp, obj, uri)
        tmp.replace(dest)

    @staticmethod
    def _verify(path: Path, obj: RemoteObject, uri: str) -> None:
        size = path.stat().st_size
        if size != obj.size:
            path.unlink(missing_ok=True)
            raise StorageError(f"{uri}: downloaded {size} bytes, expected {obj.size}")
        # A single-part ETag is the MD5 of the body; multipart ETags ("...-N") are not.
        if "-" not in obj.etag and len(obj.etag) == 32 and _md5(path) != obj.etag:
            path.unlink(missing_ok=True)
            raise StorageError(f"{uri}: checksum mismatch after download (ETag {obj.etag})")

    @staticmethod
    def _cache_key(uri: str, identity: str) -> str:
        return hashlib.sha256(f"{uri}\n{identity}".encode()).hexdigest()[:40]

    # -- reading --------------------------------------------------------------------------------
    def stage_file(self, uri: str) -> Path:
        """A local path holding the object at `uri` (downloaded into the cache if remote)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            assert loc.path is not None
            if not loc.path.is_file():
                raise NotFound(f"{uri}: no such file")
            return loc.path
        obj = self._head(loc)
        name = Path(loc.key).name
        entry = self.cache.get(
            self._cache_key(uri, f"{obj.etag}:{obj.size}"),
            obj.size,
            lambda folder: self._download(loc, obj, folder / "data" / name),
            {"uri": uri, "etag": obj.etag, "size": obj.size},
        )
        return entry / "data" / name

    def stage_dir(self, uri: str, only: frozenset[str] | None = None) -> Path:
        """A local directory mirroring the prefix at `uri` (parallel downloads for S3).

        `only` limits the download to files with these base names (e.g. the tokenizer
        files, so a CPU preflight does not pull gigabytes of weights)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            assert loc.path is not None
            if not loc.path.is_dir():
                raise NotFound(f"{uri}: no such directory")
            return loc.path
        objects = [o for o in self._list(loc) if not o.key.endswith("/")]
        if only is not None:
            objects = [o for o in objects if Path(o.key).name in only]
        if not objects:
            raise NotFound(f"{uri}: no objects under this prefix")
        identity = "\n".join(f"{o.key}:{o.etag}:{o.size}" for o in sorted(objects, key=lambda o: o.key))
        prefix = loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""

        def fill(folder: Path) -> None:
            with ThreadPoolExecutor(max_workers=8) as pool:
                futures = [pool.submit(self._download, loc, o, folder / "data" / o.key[len(prefix) :]) for o in objects]
                for future in futures:
                    future.result()

        entry = self.cache.get(
            self._cache_key(uri, identity), sum(o.size for o in objects), fill, {"uri": uri, "objects": len(objects)}
        )
        return entry / "data"

    def fingerprint(self, uri: str) -> dict[str, Any]:
        """What the manifest records for provenance: ETag and size (S3) or sha256 and size (local)."""
        loc = parse_uri(uri)
        if loc.is_s3:
            obj = self._head(loc)
            return {"uri": uri, "etag": obj.etag, "size": obj.size}
        assert loc.path is not None
        return {"uri": uri, "sha256": sha256_file(loc.path), "size": loc.path.stat().st_size}

    def read_bytes(self, uri: str) -> bytes:
        return self.stage_file(uri).read_bytes() if parse_uri(uri).is_s3 else self._read_local(uri)

    @staticmethod
    def _read_local(uri: str) -> bytes:
        path = parse_uri(uri).path
        assert path is not None
        if not path.is_file():
            raise NotFound(f"{uri}: no such file")
        return path.read_bytes()

    def read_text_uncached(self, uri: str) -> str | None:
        """Small control files (checkpoint markers, state): always fresh, None when absent."""
        loc = parse_uri(uri)
        if loc.is_s3:
            assert loc.bucket is not None
            try:
                body = self.s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
            except botocore.exceptions.ClientError as exc:
                err = _s3_error(exc, uri)
                if isinstance(err, NotFound):
                    return None
                raise err from exc
            except botocore.exceptions.BotoCoreError as exc:
                raise _s3_error(exc, uri) from exc
            return bytes(body).decode()
        assert loc.path is not None
        return loc.path.read_text() if loc.path.is_file() else None

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer at the end of the object): file headers without the file."""
        loc = parse_uri(uri)
        if loc.is_s3:
            assert loc.bucket is not None
            with self._s3_call(uri):
                body = self.s3.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-{start + length - 1}")
                return bytes(body["Body"].read())
        assert loc.path is not None
        if not loc.path.is_file():
            raise NotFound(f"{uri}: no such file")
        with loc.path.open("rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def mark_complete(self, uri: str, record: dict[str, Any]) -> None:
        """Declare the folder at `uri` whole; call after every other file is written."""
        self.put_bytes(json.dumps(record).encode(), parse_uri(uri).join(COMPLETE_MARKER).uri)

    def is_complete(self, uri: str) -> bool:
        return self.read_text_uncached(parse_uri(uri).join(COMPLETE_MARKER).uri) is not None

    def list_children(self, uri: str) -> list[str]:
        """Names directly under a prefix / directory (one level), sorted."""
        loc = parse_uri(uri)
        if loc.is_s3:
            assert loc.bucket is not None
            prefix = loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""
            names: set[str] = set()
            with self._s3_call(uri):
                pages = self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=loc.bucket, Prefix=prefix, Delimiter="/"
                )
                for page in pages:
                    names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
                    names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            return sorted(n for n in names if n)
        assert loc.path is not None
        return sorted(p.name for p in loc.path.iterdir()) if loc.path.is_dir() else []

    # -- writing --------------------------------------------------------------------------------
    def put_file(self, src: Path, uri: str) -> None:
        """Publish one file atomically: readers see the old object, or the whole new one."""
        loc = parse_uri(uri)
        if loc.is_s3:
            assert loc.bucket is not None
            with self._s3_call(uri):
                self.s3.upload_file(str(src), loc.bucket, loc.key, Config=TRANSFER)
            return
        assert loc.path is not None
        try:
            _atomic_copy(src, loc.path)
        except OSError as exc:
            raise StorageError(f"{uri}: cannot write: {exc}") from exc

    def put_bytes(self, data: bytes, uri: str) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as fh:
            fh.write(data)
        try:
            self.put_file(Path(fh.name), uri)
        finally:
            Path(fh.name).unlink(missing_ok=True)

    def put_dir(self, src: Path, uri: str, last: tuple[str, ...] = ()) -> list[str]:
        """Upload a directory's files in parallel; names in `last` go after all others, in order."""
        base = parse_uri(uri)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        rel = [p.relative_to(src).as_posix() for p in files]
        first = [(p, r) for p, r in zip(files, rel, strict=True) if r not in last]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for future in [pool.submit(self.put_file, p, base.join(r).uri) for p, r in first]:
                future.result()
        for name in last:
            if (src / name).is_file():
                self.put_file(src / name, base.join(name).uri)
        return rel

    def check_writable(self, uri: str) -> None:
        """Fail before any compute is spent if the output cannot be written.

        Every rank checks, so each writes its own probe, and the local `.kubetune/` folder stays:
        removing it raced with another rank about to write its probe there (seen in CI as a
        StorageError on rank 1).
        """
        probe = parse_uri(uri).join(".kubetune", f"write-check-{uuid.uuid4().hex[:12]}")
        try:
            self.put_bytes(b"ok", probe.uri)
        except KubetuneError as exc:
            # Name what the user wrote (the output URI), not our probe's random key.
            cause = str(exc).removeprefix(f"{probe.uri}: ")
            raise type(exc)(f"{uri}: the output cannot be written: {cause}") from exc
        if probe.is_s3:
            assert probe.bucket is not None
            with self._s3_call(probe.uri):
                self.s3.delete_object(Bucket=probe.bucket, Key=probe.key)
        else:
            assert probe.path is not None
            probe.path.unlink(missing_ok=True)

    def delete_prefix(self, uri: str) -> None:
        loc = parse_uri(uri)
        if loc.is_s3:
            assert loc.bucket is not None
            keys: list[ObjectIdentifierTypeDef] = [{"Key": o.key} for o in self._list(loc)]
            with self._s3_call(uri):
                for start in range(0, len(keys), 1000):
                    self.s3.delete_objects(Bucket=loc.bucket, Delete={"Objects": keys[start : start + 1000]})
            return
        assert loc.path is not None
        shutil.rmtree(loc.path, ignore_errors=True)
