"""A secret-leak sweep: the S3 credentials of a job appear nowhere but in their Secret.

Two jobs run with a credentials Secret of distinctive values (an identity of the S3 server): one
succeeds, one fails on S3 (its output bucket does not exist), because error paths are where a
client's request or a config dump ends up in a message. Then every place a user or an attacker
with read access could look is searched for the values (raw and base64): the operator's log,
every file the test kubelet wrote for the pods (logs, termination messages, mounted ConfigMaps,
caches), every API object of the namespace except the Secret itself (FineTuneJobs with status,
Events, Jobs, Pods, ConfigMaps, Services), and every object the runs wrote to S3.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from operator_env import Kube, OperatorProcess, finetunejob, stage_tiny_job

from harness import Cluster
from harness.finetunejob import GROUP, NAMESPACE, PLURAL, VERSION
from harness.seaweed import SWEEPER

pytestmark = [pytest.mark.slow, pytest.mark.s3]
pytest_plugins = ["operator_fixtures"]  # cluster, kube, operator

TRAIN_TIMEOUT = 240


def leak_needles(values: list[str]) -> list[bytes]:
    return [form for value in values for form in (value.encode(), base64.b64encode(value.encode()))]


def found_in(data: bytes, needles: list[bytes]) -> list[bytes]:
    return [needle for needle in needles if needle in data]


def test_credentials_appear_nowhere_but_in_their_secret(
    kube: Kube, cluster: Cluster, operator: OperatorProcess, s3_endpoint: str, tiny_model_dir: Path
) -> None:
    bucket = f"kt-leak-{secrets.token_hex(4)}"
    s3 = stage_tiny_job(s3_endpoint, tiny_model_dir, bucket)
    # An identity of the S3 server with distinctive values (SeaweedFS knows its identities at start).
    key_id, secret_key = SWEEPER.access_key, SWEEPER.secret_key
    kube.core.create_namespaced_secret(
        NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "sweep-creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key},
        },
    )
    for name, output in (("sweep-ok", f"s3://{bucket}/out/sweep-ok/"), ("sweep-bad", "s3://no-such-bucket-kt/out/")):
        body = finetunejob(name, bucket, s3_endpoint)
        body["spec"]["storage"]["credentialsSecret"] = "sweep-creds"
        body["spec"]["output"]["uri"] = output
        kube.apply(body)
    ok = kube.wait_phase("sweep-ok", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    bad = kube.wait_phase("sweep-bad", {"Succeeded", "Failed"}, TRAIN_TIMEOUT, operator.check_alive)
    assert ok.phase == "Succeeded", ok
    assert bad.phase == "Failed" and bad.error is not None and "no-such-bucket-kt" in bad.error.message, bad

    needles = leak_needles([key_id, secret_key])
    leaks: list[str] = []
    searched = {"operator log": 0, "pod files": 0, "API objects": 0, "S3 objects": 0}

    for hit in found_in(operator.log().encode(), needles):
        leaks.append(f"operator log: {hit!r}")
    searched["operator log"] = 1

    for path in sorted(p for p in cluster.work_root.rglob("*") if p.is_file() and not p.is_symlink()):
        searched["pod files"] += 1
        for hit in found_in(path.read_bytes(), needles):
            leaks.append(f"{path.relative_to(cluster.work_root)}: {hit!r}")

    serialize = kube.core.api_client.sanitize_for_serialization
    listed: dict[str, list[dict[str, Any]]] = {
        "finetunejobs": kube.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"],
        "events": serialize(kube.core.list_namespaced_event(NAMESPACE))["items"],
        "jobs": serialize(kube.batch.list_namespaced_job(NAMESPACE))["items"],
        "pods": serialize(kube.core.list_namespaced_pod(NAMESPACE))["items"],
        "configmaps": serialize(kube.core.list_namespaced_config_map(NAMESPACE))["items"],
        "services": serialize(kube.core.list_namespaced_service(NAMESPACE))["items"],
    }
    for kind, items in listed.items():
        for item in items:
            searched["API objects"] += 1
            for hit in found_in(json.dumps(item).encode(), needles):
                leaks.append(f"{kind}/{item['metadata']['name']}: {hit!r}")

    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/"):
        for obj in page.get("Contents", []):
            searched["S3 objects"] += 1
            for hit in found_in(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read(), needles):
                leaks.append(f"s3://{bucket}/{obj['Key']}: {hit!r}")

    assert searched["pod files"] >= 10 and searched["API objects"] >= 10 and searched["S3 objects"] >= 5, searched
    assert {"adapter_model.safetensors", "manifest.json", "README.md"} <= {
        obj["Key"].rsplit("/", 1)[-1]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/sweep-ok/")
        for obj in page.get("Contents", [])
    }
    assert leaks == [], "\n".join(leaks)
    # The pods did use the Secret: through secretKeyRef, never as a literal value.
    for pod in listed["pods"]:
        env = {e["name"]: e for e in pod["spec"]["containers"][0].get("env", [])}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "sweep-creds"
