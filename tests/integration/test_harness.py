"""The test harness itself: the kmock-based API server and the one-node cluster, through the kubernetes client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from harness import Cluster, RunningApiServer
from harness.cluster import INDEX_KEY

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
PY = sys.executable


@pytest.fixture
def client(kube_api: RunningApiServer) -> Iterator[kubernetes.client.ApiClient]:
    api_client = kube_api.api_client()
    yield api_client
    api_client.close()


def core(client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(client)


def batch(client: kubernetes.client.ApiClient) -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(client)


def custom(client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(client)


def ftj(name: str, **spec: Any) -> dict[str, Any]:
    """The smallest FineTuneJob the CRD's schema accepts, plus ``spec``."""
    required = {
        "baseModel": {"uri": "s3://models/tiny/"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://out/tune/"},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {**required, **spec},
    }


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "kubetune:test",
        "command": command,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    container.update(spec.pop("container", {}))
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "terminationGracePeriodSeconds": 5}
    pod_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}, **spec},
    }


def wait(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def job_condition(cluster: Cluster, name: str, ctype: str) -> dict[str, Any] | None:
    for j in cluster.jobs():
        if j["metadata"]["name"] == name:
            for cond in (j.get("status") or {}).get("conditions") or []:
                if cond["type"] == ctype and cond["status"] == "True":
                    return dict(cond)
    return None


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0]["state"].get("terminated") if statuses else None


# ---------------------------------------------------------------------------- API server


def test_server_owned_metadata(client: kubernetes.client.ApiClient) -> None:
    api = custom(client)
    created = api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, ftj("a", training={"epochs": 1}))
    meta = created["metadata"]
    assert len(meta["uid"]) == 36 and meta["generation"] == 1 and meta["namespace"] == "default"
    assert meta["creationTimestamp"].endswith("Z") and len(meta["creationTimestamp"]) == 20
    rv = int(meta["resourceVersion"])

    labelled = api.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "a", {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled["metadata"]["generation"] == 1 and int(labelled["metadata"]["resourceVersion"]) > rv
    respec = api.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "a", {"spec": {"training": {"epochs": 2}}}
    )
    assert respec["metadata"]["generation"] == 2 and respec["metadata"]["uid"] == meta["uid"]
    noop = api.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "a", {"spec": {"training": {"epochs": 2}}}
    )
    assert noop["metadata"]["resourceVersion"] == respec["metadata"]["resourceVersion"]

    generated = core(client).create_namespaced_config_map("default", {"metadata": {"generateName": "cm-"}})
    assert generated.metadata.name.startswith("cm-") and len(generated.metadata.name) == 8

    with pytest.raises(ApiException) as conflict:
        api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, ftj("a"))
    assert conflict.value.status == 409
    with pytest.raises(ApiException) as stale:
        api.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "a",
            {"metadata": {"resourceVersion": str(rv)}, "spec": {"training": {"epochs": 3}}},
        )
    assert stale.value.status == 409
    with pytest.raises(ApiException) as invalid:
        api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, ftj("Not_A_Name"))
    assert invalid.value.status == 422
    with pytest.raises(ApiException) as no_ns:
        api.create_namespaced_custom_object(GROUP, VERSION, "nowhere", PLURAL, ftj("b"))
    assert no_ns.value.status == 404


def test_status_subresource(client: kubernetes.client.ApiClient) -> None:
    api = custom(client)
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, {**ftj("a", training={"epochs": 1}), "status": {"phase": "Ignored"}}
    )
    assert "status" not in created
    main = api.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "a", {"status": {"phase": "Nope"}, "metadata": {"labels": {"k": "v"}}}
    )
    assert "status" not in main and main["metadata"]["labels"] == {"k": "v"}
    status = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "a", {"status": {"phase": "Running"}, "spec": {"training": {"epochs": 9}}}
    )
    assert status["status"] == {"phase": "Running"} and status["spec"] == created["spec"]
    assert status["metadata"]["generation"] == 1
    json_patched = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "a", [{"op": "replace", "path": "/status/phase", "value": "Succeeded"}]
    )
    assert json_patched["status"]["phase"] == "Succeeded"


def test_label_and_field_selectors(client: kubernetes.client.ApiClient) -> None:
    v1 = core(client)
    for name, labels in [("a", {"app": "x", "tier": "1"}), ("b", {"app": "y"}), ("c", {"tier": "2"})]:
        v1.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})

    def names(selector: str = "", fields: str = "") -> list[str]:
        items = v1.list_namespaced_config_map("default", label_selector=selector, field_selector=fields).items
        return [cm.metadata.name for cm in items]

    assert names("app=x") == ["a"] and names("app==y") == ["b"]
    assert names("app!=x") == ["b", "c"] and names("tier") == ["a", "c"] and names("!tier") == ["b"]
    assert names("app in (x,y)") == ["a", "b"] and names("app notin (x),tier") == ["c"]
    assert names("app in (x, y),tier=1") == ["a"]
    assert names(fields="metadata.name=b") == ["b"] and names(fields="metadata.name!=b") == ["a", "c"]
    with pytest.raises(ApiException) as bad:
        names("app in x")
    assert bad.value.status == 400

    listing = v1.list_namespaced_config_map("default")
    assert int(listing.metadata.resource_version) > 0
    events = [
        (e["type"], e["object"].metadata.name)
        for e in kubernetes.watch.Watch().stream(
            v1.list_namespaced_config_map, "default", label_selector="app", timeout_seconds=1
        )
    ]
    assert sorted(events) == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_resumes_from_resource_version_and_reports_selector_transitions(
    client: kubernetes.client.ApiClient,
) -> None:
    v1 = core(client)
    v1.create_namespaced_config_map("default", {"metadata": {"name": "a", "labels": {"app": "x"}}})
    rv = v1.list_namespaced_config_map("default").metadata.resource_version
    v1.patch_namespaced_config_map("a", "default", {"metadata": {"labels": {"app": "y"}}})
    v1.patch_namespaced_config_map("a", "default", {"metadata": {"labels": {"app": "x"}}})
    v1.delete_namespaced_config_map("a", "default")
    stream = kubernetes.watch.Watch().stream(
        v1.list_namespaced_config_map, "default", label_selector="app=x", resource_version=rv, timeout_seconds=1
    )
    assert [e["type"] for e in stream] == ["DELETED", "ADDED", "DELETED"]


def test_finalizers_and_garbage_collection(client: kubernetes.client.ApiClient, kube_api: RunningApiServer) -> None:
    api, v1 = custom(client), core(client)
    owner = api.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, {**ftj("owner"), "metadata": {"name": "owner", "finalizers": ["x/y"]}}
    )
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "name": "owner", "uid": owner["metadata"]["uid"]}
    child = v1.create_namespaced_config_map("default", {"metadata": {"name": "child", "ownerReferences": [ref]}})
    grandchild_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "child", "uid": child.metadata.uid}
    v1.create_namespaced_secret("default", {"metadata": {"name": "grandchild", "ownerReferences": [grandchild_ref]}})
    held = {"name": "held", "ownerReferences": [ref], "finalizers": ["keep/me"]}
    v1.create_namespaced_service("default", {"metadata": held, "spec": {"clusterIP": "None"}})

    api.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "owner")
    marked = api.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "owner")
    assert marked["metadata"]["deletionTimestamp"] and v1.read_namespaced_config_map("child", "default")

    api.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "owner", {"metadata": {"finalizers": None}})
    assert kube_api.api.objects_of(GROUP, VERSION, PLURAL) == []
    assert kube_api.api.objects_of("", "v1", "configmaps") == []
    assert kube_api.api.objects_of("", "v1", "secrets") == []
    [service] = kube_api.api.objects_of("", "v1", "services")
    assert service["metadata"]["deletionTimestamp"]

    dangling = {**ref, "uid": "00000000-0000-0000-0000-000000000000"}
    v1.create_namespaced_config_map("default", {"metadata": {"name": "stray", "ownerReferences": [dangling]}})
    wait(lambda: kube_api.api.objects_of("", "v1", "configmaps") == [])


def test_namespaces(client: kubernetes.client.ApiClient) -> None:
    v1 = core(client)
    assert {ns.metadata.name for ns in v1.list_namespace().items} >= {"default", "kube-system"}
    assert v1.read_namespace("default").status.phase == "Active"
    v1.create_namespace({"metadata": {"name": "team"}})
    v1.create_namespaced_config_map("team", {"metadata": {"name": "x"}})
    v1.delete_namespace("team")
    assert v1.list_namespaced_config_map("team").items == []
    with pytest.raises(ApiException) as gone:
        v1.read_namespace("team")
    assert gone.value.status == 404


# ---------------------------------------------------------------------------- custom resource schemas


def status_of(error: ApiException) -> dict[str, Any]:
    return dict(json.loads(error.body))


def refused(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The Status of a request that must fail."""
    with pytest.raises(ApiException) as failure:
        call(*args, **kwargs)
    status = status_of(failure.value)
    assert status["code"] == failure.value.status
    return status


@pytest.mark.parametrize(
    ("spec", "field", "reason", "body"),
    [
        (
            {"training": {"maxSeqLength": "long"}},
            "spec.training.maxSeqLength",
            "FieldValueTypeInvalid",
            'Invalid value: "string": spec.training.maxSeqLength in body must be of type integer: "string"',
        ),
        (
            {"training": {"packing": "yes"}},
            "spec.training.packing",
            "FieldValueTypeInvalid",
            'Invalid value: "string": spec.training.packing in body must be of type boolean: "string"',
        ),
        (
            {"lora": {"targetModules": "q_proj"}},
            "spec.lora.targetModules",
            "FieldValueTypeInvalid",
            'Invalid value: "string": spec.lora.targetModules in body must be of type array: "string"',
        ),
        (
            {"training": {"lrScheduler": "step"}},
            "spec.training.lrScheduler",
            "FieldValueNotSupported",
            'Unsupported value: "step": supported values: "cosine", "linear", "constant"',
        ),
        (
            {"storage": {"credentialsSecret": "My_Secret"}},
            "spec.storage.credentialsSecret",
            "FieldValueInvalid",
            'Invalid value: "My_Secret": spec.storage.credentialsSecret in body should match '
            "'^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'",
        ),
        (
            {"lora": {"r": 0}},
            "spec.lora.r",
            "FieldValueInvalid",
            "Invalid value: 0: spec.lora.r in body should be greater than or equal to 1",
        ),
        (
            {"lora": {"r": 2048}},
            "spec.lora.r",
            "FieldValueInvalid",
            "Invalid value: 2048: spec.lora.r in body should be less than or equal to 1024",
        ),
        (  # minimum: 0 with OpenAPI 3.0's boolean exclusiveMinimum
            {"training": {"learningRate": 0}},
            "spec.training.learningRate",
            "FieldValueInvalid",
            "Invalid value: 0: spec.training.learningRate in body should be greater than 0",
        ),
        (  # maximum: 1.0 with exclusiveMaximum
            {"lora": {"dropout": 1.0}},
            "spec.lora.dropout",
            "FieldValueInvalid",
            "Invalid value: 1: spec.lora.dropout in body should be less than 1",
        ),
        (
            {"storage": {"region": "r" * 65}},
            "spec.storage.region",
            "FieldValueTooLong",
            "Too long: may not be more than 64 bytes",
        ),
        (
            {"lora": {"targetModules": ["q_proj", ""]}},
            "spec.lora.targetModules[1]",
            "FieldValueInvalid",
            'Invalid value: "": spec.lora.targetModules[1] in body should be at least 1 chars long',
        ),
        (
            {"lora": {"targetModules": []}},
            "spec.lora.targetModules",
            "FieldValueInvalid",
            "Invalid value: 0: spec.lora.targetModules in body should have at least 1 items",
        ),
        (
            {"resources": {"nodeSelector": {"pool": 3}}},
            "spec.resources.nodeSelector.pool",
            "FieldValueTypeInvalid",
            'Invalid value: "integer": spec.resources.nodeSelector.pool in body must be of type string: "integer"',
        ),
        (
            {"resources": {"tolerations": [{"operator": "Sometimes"}]}},
            "spec.resources.tolerations[0].operator",
            "FieldValueNotSupported",
            'Unsupported value: "Sometimes": supported values: "Exists", "Equal"',
        ),
        (
            {"dataset": {"format": "chat"}},  # replaces the dataset, which then lacks the required train
            "spec.dataset.train",
            "FieldValueRequired",
            "Required value",
        ),
    ],
)
def test_a_custom_resource_that_breaks_its_schema_is_refused_with_the_field_named(
    client: kubernetes.client.ApiClient,
    kube_api: RunningApiServer,
    spec: dict[str, Any],
    field: str,
    reason: str,
    body: str,
) -> None:
    api = custom(client)
    status = refused(api.create_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, ftj("bad", **spec))
    assert (status["code"], status["reason"]) == (422, "Invalid")
    causes = status["details"]["causes"]
    assert causes[0] == {"reason": reason, "field": field, "message": body}
    assert status["details"]["kind"] == "FineTuneJob" and status["details"]["group"] == GROUP
    if reason in ("FieldValueTypeInvalid", "FieldValueRequired"):  # kube-apiserver then skips CEL, and says so
        assert [cause["field"] for cause in causes] == [field, "<nil>"]
        assert "some validation rules were not checked" in causes[1]["message"]
        assert status["message"].startswith(f'FineTuneJob.kubetune.io "bad" is invalid: [{field}: {body}, <nil>: ')
    else:
        assert len(causes) == 1
        assert status["message"] == f'FineTuneJob.kubetune.io "bad" is invalid: {field}: {body}'
    assert kube_api.api.objects_of(GROUP, VERSION, PLURAL) == []


def test_every_error_is_reported_in_one_status(client: kubernetes.client.ApiClient) -> None:
    body = ftj("bad", lora={"r": 0, "alpha": -1})
    del body["spec"]["output"]
    status = refused(custom(client).create_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, body)
    fields = [cause["field"] for cause in status["details"]["causes"]]
    assert sorted(fields[:3]) == ["spec.lora.alpha", "spec.lora.r", "spec.output"]
    assert status["message"].startswith('FineTuneJob.kubetune.io "bad" is invalid: [')
    assert "spec.output: Required value" in status["message"] and status["message"].endswith("]")


def test_int_or_string_and_cel_rules(client: kubernetes.client.ApiClient) -> None:
    api = custom(client)
    for name, epochs in [("three", 3), ("auto", "auto")]:
        created = api.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, ftj(name, training={"epochs": epochs})
        )
        assert created["spec"]["training"]["epochs"] == epochs
    message = "epochs must be 'auto' or an integer between 1 and 100000"
    for epochs, shown in [("many", "string"), (0, "integer"), (100001, "integer")]:
        status = refused(
            api.create_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            ftj("x", training={"epochs": epochs}),
        )
        cause = {
            "reason": "FieldValueInvalid",
            "field": "spec.training.epochs",
            "message": f'Invalid value: "{shown}": {message}',
        }
        assert status["details"]["causes"] == [cause]
        assert status["message"] == f'FineTuneJob.kubetune.io "x" is invalid: spec.training.epochs: {cause["message"]}'
    float_epochs = refused(
        api.create_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, ftj("x", training={"epochs": 1.5})
    )
    assert float_epochs["details"]["causes"][0] == {
        "reason": "FieldValueTypeInvalid",
        "field": "spec.training.epochs",
        "message": 'Invalid value: "number": spec.training.epochs in body must be of type integer,string: "number"',
    }
    # As in kube-apiserver, CEL rules are not run on an object with type errors; that is said, too.
    assert "some validation rules were not checked" in float_epochs["message"]
    patched = refused(
        api.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "three",
        {"spec": {"training": {"batchSize": "huge"}}},
    )
    assert patched["details"]["causes"][0]["field"] == "spec.training.batchSize"
    assert "batchSize must be 'auto' or an integer" in patched["message"]


def test_unknown_fields_are_pruned_warned_about_or_refused_as_field_validation_says(
    client: kubernetes.client.ApiClient, kube_api: RunningApiServer
) -> None:
    api = custom(client)
    typo = ftj("warned", training={"learningrate": 0.1, "epochs": 2}, colour="blue")
    # No fieldValidation: Warn, the default since Kubernetes 1.23.
    created, code, headers = api.create_namespaced_custom_object_with_http_info(GROUP, VERSION, "default", PLURAL, typo)
    assert code == 201 and created["spec"]["training"] == {"epochs": 2} and "colour" not in created["spec"]
    assert (
        headers["Warning"]
        == '299 - "unknown field \\"spec.colour\\"", 299 - "unknown field \\"spec.training.learningrate\\""'
    )
    stored = kube_api.api.get_object(GROUP, VERSION, PLURAL, "default", "warned")
    assert stored is not None and stored["spec"] == created["spec"]

    ignored = {**typo, "metadata": {"name": "ignored"}}
    created, _, headers = api.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, "default", PLURAL, ignored, field_validation="Ignore"
    )
    assert created["spec"]["training"] == {"epochs": 2} and "Warning" not in headers

    strict = refused(
        api.create_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        {**typo, "metadata": {"name": "strict"}},
        field_validation="Strict",
    )
    assert (strict["code"], strict["reason"]) == (400, "BadRequest")
    assert strict["message"] == (
        'FineTuneJob in version "v1alpha1" cannot be handled as a FineTuneJob: strict decoding error: '
        'unknown field "spec.colour", unknown field "spec.training.learningrate"'
    )
    assert kube_api.api.get_object(GROUP, VERSION, PLURAL, "default", "strict") is None

    # A patch that only adds an unknown field changes nothing: no new resourceVersion.
    before = kube_api.api.get_object(GROUP, VERSION, PLURAL, "default", "warned")
    assert before is not None
    same = api.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "warned", {"spec": {"colour": "red"}})
    assert same["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    refused(
        api.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "warned",
        {"spec": {"colour": "red"}},
        field_validation="Strict",
    )


def test_a_refused_update_changes_nothing(client: kubernetes.client.ApiClient, kube_api: RunningApiServer) -> None:
    api = custom(client)
    api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, ftj("kept", training={"epochs": 2}))
    before = kube_api.api.get_object(GROUP, VERSION, PLURAL, "default", "kept")
    rv = kube_api.api.resource_version
    stream = kubernetes.watch.Watch().stream(
        api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        resource_version=str(rv),
        timeout_seconds=1,
    )
    bad_spec = {"training": {"epochs": "many", "seed": 1}, "lora": {"r": 8}}
    refused(api.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "kept", {"spec": bad_spec})
    json_patch = [
        {"op": "replace", "path": "/spec/training/epochs", "value": "many"},
        {"op": "add", "path": "/metadata/labels", "value": {"touched": "yes"}},
    ]
    refused(api.patch_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "kept", json_patch)
    assert before is not None
    replacement = {**before, "spec": {**before["spec"], "training": {"epochs": 0}}}
    refused(api.replace_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "kept", replacement)
    assert kube_api.api.get_object(GROUP, VERSION, PLURAL, "default", "kept") == before
    assert kube_api.api.resource_version == rv
    assert list(stream) == []  # no watch event


CRD_TEMPLATE: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "spec": {"group": "harness.test", "scope": "Namespaced"},
}


def widget_crd(tmp_path: Path, kind: str, status_schema: dict[str, Any]) -> Path:
    """A CRD of our own, to check the status subresource both typed and x-kubernetes-preserve-unknown-fields."""
    plural = kind.lower() + "s"
    spec_schema = {
        "type": "object",
        "properties": {
            "size": {"type": "integer", "minimum": 1},
            "mode": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "mode is immutable"}],
            },
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "note": {"type": "string", "nullable": True},
        },
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.size) || self.size % 2 == 0",
                "messageExpression": "'size must be even, not ' + string(self.size)",
                "fieldPath": ".size",
            }
        ],
    }
    crd = {
        **CRD_TEMPLATE,
        "metadata": {"name": f"{plural}.harness.test"},
        "spec": {
            **CRD_TEMPLATE["spec"],
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }
    path = tmp_path / f"{plural}.yaml"
    path.write_text(yaml.safe_dump(crd))
    return path


def widget(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "harness.test/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_status_subresource_is_validated_and_pruned_against_a_typed_status(
    client: kubernetes.client.ApiClient, kube_api: RunningApiServer, tmp_path: Path
) -> None:
    typed = {
        "type": "object",
        "properties": {
            "phase": {"type": "string", "enum": ["Pending", "Done"]},
            "count": {"type": "integer", "minimum": 0},
        },
    }
    kube_api.api.register_crd(widget_crd(tmp_path, "Widget", typed))
    api = custom(client)
    args = ("harness.test", "v1", "default", "widgets")
    api.create_namespaced_custom_object(*args, widget("Widget", "w", size=2, mode="fast"))
    done = api.patch_namespaced_custom_object_status(*args, "w", {"status": {"phase": "Done", "count": 1, "x": 1}})
    assert done["status"] == {"phase": "Done", "count": 1}  # the unknown status field is pruned

    before = kube_api.api.get_object("harness.test", "v1", "widgets", "default", "w")
    status = refused(api.patch_namespaced_custom_object_status, *args, "w", {"status": {"phase": "Lost", "count": -1}})
    assert [cause["field"] for cause in status["details"]["causes"]] == ["status.phase", "status.count"]
    assert status["message"].startswith('Widget.harness.test "w" is invalid: [status.phase: Unsupported value: "Lost"')
    refused(api.replace_namespaced_custom_object_status, *args, "w", {**done, "status": {"count": "many"}})
    assert kube_api.api.get_object("harness.test", "v1", "widgets", "default", "w") == before

    # The main endpoint: CEL with messageExpression and fieldPath, a transition rule (oldSelf), nullable.
    odd = refused(api.patch_namespaced_custom_object, *args, "w", {"spec": {"size": 3}})
    assert odd["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.size",
            "message": 'Invalid value: "object": size must be even, not 3',
        }
    ]
    changed = refused(api.patch_namespaced_custom_object, *args, "w", {"spec": {"mode": "slow"}})
    assert changed["details"]["causes"][0]["field"] == "spec.mode" and "mode is immutable" in changed["message"]
    nulled = refused(api.replace_namespaced_custom_object, *args, "w", {**done, "spec": {"size": None}})
    assert 'spec.size in body must be of type integer: "null"' in nulled["message"]
    kept = api.replace_namespaced_custom_object(
        *args, "w", {**done, "spec": {"size": 4, "mode": "fast", "note": None, "extra": {"any": {"thing": 1}}}}
    )
    assert kept["spec"] == {"size": 4, "mode": "fast", "note": None, "extra": {"any": {"thing": 1}}}
    assert kept["status"] == done["status"]


def test_status_that_preserves_unknown_fields_takes_anything(
    client: kubernetes.client.ApiClient, kube_api: RunningApiServer, tmp_path: Path
) -> None:
    loose = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    kube_api.api.register_crd(widget_crd(tmp_path, "Gadget", loose))
    api = custom(client)
    args = ("harness.test", "v1", "default", "gadgets")
    api.create_namespaced_custom_object(*args, widget("Gadget", "g", size=2))
    anything = {"phase": "Whatever", "nested": {"deep": [1, "two", {"three": None}]}}
    assert api.patch_namespaced_custom_object_status(*args, "g", {"status": anything})["status"] == anything
    # A status update cannot change (or break) the spec.
    assert api.patch_namespaced_custom_object_status(*args, "g", {"spec": {"size": -1}})["spec"] == {"size": 2}


def kubectl(kube_api: RunningApiServer, tmp_path: Path, *args: str) -> str:
    assert kube_api.kubeconfig is not None
    env = {**os.environ, "KUBECACHEDIR": str(tmp_path / "kube-cache")}
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kube_api.kubeconfig), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (make test installs it as root)")
def test_kubectl_get_uses_the_crd_printer_columns(
    client: kubernetes.client.ApiClient, kube_api: RunningApiServer, tmp_path: Path
) -> None:
    api = custom(client)
    api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, ftj("tune-1", resources={"gpus": 2}))
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "tune-1", {"status": {"phase": "Running", "metrics": {"trainLoss": 1.5}}}
    )
    lines = kubectl(kube_api, tmp_path, "get", "ftj").splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "ETA", "AGE"]
    assert lines[1].split()[:3] == ["tune-1", "Running", "1.5"]
    wide = kubectl(kube_api, tmp_path, "get", "finetunejobs", "-o", "wide").splitlines()
    assert wide[0].split() == [
        "NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "ETA", "AGE", "MODEL", "GPUS", "ATTEMPTS", "GPU-HOURS"
    ]  # fmt: skip
    assert "2" in wide[1].split()
    assert "tune-1" in kubectl(kube_api, tmp_path, "get", "kubetune")
    assert "No resources found" in kubectl(kube_api, tmp_path, "get", "pods,jobs") + "No resources found"
    assert json.loads(kubectl(kube_api, tmp_path, "get", "ftj", "tune-1", "-o", "json"))["status"]["phase"] == "Running"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (make test installs it as root)")
def test_kubectl_sends_field_validation_and_shows_the_servers_verdict(
    kube_api: RunningApiServer, tmp_path: Path
) -> None:
    assert kube_api.kubeconfig is not None
    env = {**os.environ, "KUBECACHEDIR": str(tmp_path / "kube-cache")}

    def apply(body: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
        manifest = tmp_path / "ftj.yaml"
        manifest.write_text(yaml.safe_dump({**body, "metadata": {**body["metadata"], "namespace": "default"}}))
        command = ["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "apply", "-f", str(manifest), *flags]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)

    typo = ftj("typo", training={"learningrate": 0.1})
    warned = apply(typo, "--validate=warn")  # fieldValidation=Warn: stored without the unknown field
    assert warned.returncode == 0, warned.stderr
    assert 'Warning: unknown field "spec.training.learningrate"' in warned.stderr
    stored = kube_api.api.get_object(GROUP, VERSION, PLURAL, "default", "typo")
    assert stored is not None and stored["spec"]["training"] == {}

    strict = apply(typo)  # kubectl's default is --validate=strict, which the server now carries out
    assert strict.returncode != 0
    assert 'strict decoding error: unknown field "spec.training.learningrate"' in strict.stderr

    bad = apply(ftj("bad", lora={"r": 0}))
    assert bad.returncode != 0 and "spec.lora.r: Invalid value: 0" in bad.stderr, bad.stderr
    assert kube_api.api.get_object(GROUP, VERSION, PLURAL, "default", "bad") is None


# ---------------------------------------------------------------------------- cluster


def test_job_runs_to_complete_with_termination_message(
    client: kubernetes.client.ApiClient, kube_cluster: Cluster
) -> None:
    script = "import sys; open(sys.argv[1], 'w').write('{\"ok\": true}'); print('hello')"
    body = job("ok", [PY, "-c", script, "/dev/termination-log"])
    batch(client).create_namespaced_job("default", body)
    cond = wait(lambda: job_condition(kube_cluster, "ok", "Complete"))
    assert cond
    [pod] = kube_cluster.pods("job-name=ok")
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True
    assert pod["status"]["phase"] == "Succeeded"
    state = terminated(pod)
    assert state is not None
    assert state["exitCode"] == 0 and state["reason"] == "Completed" and json.loads(state["message"]) == {"ok": True}
    assert kube_cluster.log(pod["metadata"]["name"]) == "hello\n"
    [j] = kube_cluster.jobs()
    assert j["status"]["succeeded"] == 1 and j["status"]["active"] == 0 and j["status"]["completionTime"]
    # pods/log is served from the pod's log file (the client's "str" decoding is broken, so read raw bytes)
    raw = core(client).read_namespaced_pod_log(pod["metadata"]["name"], "default", _preload_content=False)
    assert raw.data == b"hello\n"


def test_failing_pod_fails_the_job(client: kubernetes.client.ApiClient, kube_cluster: Cluster) -> None:
    script = "import sys; print('x' * 3000); print('boom: bad config'); sys.exit(3)"
    batch(client).create_namespaced_job("default", job("bad", [PY, "-c", script]))
    cond = wait(lambda: job_condition(kube_cluster, "bad", "Failed"))
    assert cond["reason"] == "BackoffLimitExceeded"
    [pod] = kube_cluster.pods("job-name=bad")
    state = terminated(pod)
    assert state is not None and state["exitCode"] == 3 and state["reason"] == "Error"
    assert state["message"].endswith("boom: bad config\n") and len(state["message"]) == 2048
    assert pod["status"]["phase"] == "Failed"
    time.sleep(0.3)
    assert len(kube_cluster.pods("job-name=bad")) == 1  # backoffLimit 0: never a second pod


def test_env_from_secret_and_var_expansion(client: kubernetes.client.ApiClient, kube_cluster: Cluster) -> None:
    v1 = core(client)
    v1.create_namespaced_secret("default", {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "GREETING", "value": "hi-$(TOKEN)"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
    ]
    script = "import os, sys; print(sys.argv[1], os.environ['GREETING'], os.environ['POD'], 'MISSING' in os.environ)"
    batch(client).create_namespaced_job("default", job("env", [PY, "-c", script, "$(TOKEN)"], container={"env": env}))
    wait(lambda: job_condition(kube_cluster, "env", "Complete"))
    [pod] = kube_cluster.pods("job-name=env")
    assert kube_cluster.log(pod["metadata"]["name"]) == f"s3cr3t hi-s3cr3t {pod['metadata']['name']} False\n"

    broken = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "token"}}}]
    batch(client).create_namespaced_job("default", job("noenv", [PY, "-c", "pass"], container={"env": broken}))

    def waiting() -> dict[str, Any] | None:
        pods = kube_cluster.pods("job-name=noenv")
        statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
        return statuses[0]["state"].get("waiting") if statuses else None

    state = wait(waiting)
    assert state["reason"] == "CreateContainerConfigError" and state["message"] == 'secret "absent" not found'


def test_configmap_volume_path_mapping_and_pod_ip(client: kubernetes.client.ApiClient, kube_cluster: Cluster) -> None:
    port = 18000 + os.getpid() % 1000
    config = {"metrics_host": "0.0.0.0", "metrics_port": port, "cache_dir": "/cache", "work_dir": "/tmp/run"}
    config["termination_message_path"] = "/dev/termination-log"
    core(client).create_namespaced_config_map(
        "default", {"metadata": {"name": "cfg"}, "data": {"trainer.json": json.dumps(config)}}
    )
    server = textwrap.dedent(
        """
        import json, socket, sys
        cfg = json.load(open(sys.argv[2]))
        open(cfg["cache_dir"] + "/marker", "w").write("cached")
        sock = socket.create_server((cfg["metrics_host"], cfg["metrics_port"]))
        print(json.dumps(cfg), flush=True)
        conn, _ = sock.accept()
        conn.sendall(b"pong")
        conn.close()
        open(cfg["termination_message_path"], "w").write("served")
        """
    )
    volumes = [
        {"name": "config", "configMap": {"name": "cfg"}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        {"name": "config", "mountPath": "/etc/kubetune", "readOnly": True},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    command = [PY, "-c", server, "--config", "/etc/kubetune/trainer.json"]
    for name in ("srv-a", "srv-b"):  # two pods serve the same port, each on its own pod IP
        body = job(name, command, container={"volumeMounts": mounts}, pod={"volumes": volumes})
        batch(client).create_namespaced_job("default", body)

    def running_ips() -> list[str] | None:
        pods = [p for p in kube_cluster.pods("app") if (p.get("status") or {}).get("phase") == "Running"]
        ready = len(pods) == 2 and all(kube_cluster.output(p["metadata"]["name"]) for p in pods)
        return [p["status"]["podIP"] for p in pods] if ready else None

    ips = wait(running_ips)
    assert len(set(ips)) == 2 and all(ip.startswith("127.0.0.") and ip != "127.0.0.1" for ip in ips)
    for ip in ips:
        with socket.create_connection((ip, port), timeout=5) as conn:
            assert conn.recv(4) == b"pong"
    wait(lambda: job_condition(kube_cluster, "srv-a", "Complete") and job_condition(kube_cluster, "srv-b", "Complete"))
    pod = kube_cluster.pods("job-name=srv-a")[0]
    name = pod["metadata"]["name"]
    seen = json.loads(kube_cluster.log(name))
    pod_dir = kube_cluster.pod_dir(name)
    assert seen["metrics_host"] == pod["status"]["podIP"]
    assert Path(seen["cache_dir"]).is_relative_to(pod_dir) and Path(seen["work_dir"]).is_relative_to(pod_dir)
    assert (Path(seen["cache_dir"]) / "marker").read_text() == "cached"
    assert terminated(pod)["message"] == "served"  # type: ignore[index]


def started(cluster: Cluster, job_name: str) -> list[dict[str, Any]]:
    """The Job's pods whose process has started and printed something."""
    return [p for p in cluster.pods(f"job-name={job_name}") if cluster.output(p["metadata"]["name"])]


def test_suspend_deletes_the_pod_and_resume_starts_a_new_one(
    client: kubernetes.client.ApiClient, kube_cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "sigterm"
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        def stop(*_):
            open({str(marker)!r}, "a").write("TERM\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("up", flush=True)
        time.sleep(60)
        """
    )
    batch(client).create_namespaced_job("default", job("sus", [PY, "-c", script]))
    first = wait(lambda: started(kube_cluster, "sus"))
    first_name = first[0]["metadata"]["name"]

    batch(client).patch_namespaced_job("sus", "default", {"spec": {"suspend": True}})
    wait(lambda: job_condition(kube_cluster, "sus", "Suspended"))
    wait(lambda: kube_cluster.pods("job-name=sus") == [])
    assert marker.read_text() == "TERM\n"
    [suspended] = kube_cluster.jobs()
    assert "startTime" not in suspended["status"] and suspended["status"]["active"] == 0

    batch(client).patch_namespaced_job("sus", "default", {"spec": {"suspend": False}})
    second = wait(lambda: started(kube_cluster, "sus"))
    assert second[0]["metadata"]["name"] != first_name
    assert kube_cluster.started_pods == [first_name, second[0]["metadata"]["name"]]
    [resumed] = kube_cluster.jobs()
    assert resumed["status"]["startTime"] and not job_condition(kube_cluster, "sus", "Suspended")

    batch(client).delete_namespaced_job("sus", "default", propagation_policy="Background")
    wait(lambda: kube_cluster.pods("job-name=sus") == [] and marker.read_text() == "TERM\nTERM\n")


def test_active_deadline_and_kill(client: kubernetes.client.ApiClient, kube_cluster: Cluster) -> None:
    sleeper = [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    batch(client).create_namespaced_job("default", job("slow", sleeper, activeDeadlineSeconds=1))
    cond = wait(lambda: job_condition(kube_cluster, "slow", "Failed"))
    assert cond["reason"] == "DeadlineExceeded"
    wait(lambda: kube_cluster.pods("job-name=slow") == [])

    batch(client).create_namespaced_job("default", job("victim", sleeper))
    pod = wait(lambda: started(kube_cluster, "victim"))[0]
    kube_cluster.kill(pod["metadata"]["name"])
    wait(lambda: job_condition(kube_cluster, "victim", "Failed"))
    state = terminated(kube_cluster.pods("job-name=victim")[0])
    assert state is not None and state["exitCode"] == 137 and state["reason"] == "Error"


def test_indexed_job(client: kubernetes.client.ApiClient, kube_cluster: Cluster) -> None:
    script = "import os; print(os.environ['JOB_COMPLETION_INDEX'])"
    body = job("idx", [PY, "-c", script], completionMode="Indexed", completions=3, parallelism=3)
    batch(client).create_namespaced_job("default", body)
    wait(lambda: job_condition(kube_cluster, "idx", "Complete"))
    pods = kube_cluster.pods("job-name=idx")
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1", "2"]
    for p in pods:
        index = p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
        assert p["metadata"]["name"].startswith(f"idx-{index}-")
        assert kube_cluster.log(p["metadata"]["name"]) == f"{index}\n"
    assert kube_cluster.jobs()[0]["status"]["completedIndexes"] == "0-2"


def test_indexed_pods_find_each_other_through_their_headless_service(
    client: kubernetes.client.ApiClient, kube_cluster: Cluster
) -> None:
    """As with CoreDNS: <hostname>.<subdomain> resolves to a pod's own IP once its headless Service
    selects it; each pod has its own 127.0.0.N; a pod without such a Service is not resolvable."""
    script = (
        "import os, socket, time\n"
        "me = os.environ['JOB_COMPLETION_INDEX']\n"
        "for peer in ('0', '1'):\n"
        "    for _ in range(200):\n"
        "        try:\n"
        "            print(peer, socket.gethostbyname(f'ring-{peer}.ring'), flush=True); break\n"
        "        except OSError:\n"
        "            time.sleep(0.05)\n"
        "    else:\n"
        "        print(peer, 'unresolved', flush=True)\n"
        "print('fqdn', socket.gethostbyname(f'ring-{me}.ring.default.svc.cluster.local'))\n"
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ring"},
        "spec": {"clusterIP": "None", "selector": {"app": "ring"}, "ports": [{"port": 29500}]},
    }
    core(client).create_namespaced_service("default", service)
    indexed = {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "pod": {"subdomain": "ring"}}
    batch(client).create_namespaced_job("default", job("ring", [PY, "-c", script], **indexed))
    wait(lambda: job_condition(kube_cluster, "ring", "Complete"), timeout=30)
    pods = kube_cluster.pods("job-name=ring")
    ip = {p["metadata"]["annotations"][INDEX_KEY]: p["status"]["podIP"] for p in pods}
    assert len(set(ip.values())) == 2 and all(v.startswith("127.0.0.") and v != "127.0.0.1" for v in ip.values())
    for p in pods:
        me = p["metadata"]["annotations"][INDEX_KEY]
        lines = kube_cluster.log(p["metadata"]["name"]).splitlines()
        assert lines == [f"0 {ip['0']}", f"1 {ip['1']}", f"fqdn {ip[me]}"], lines

    # No Service named by the subdomain: nothing resolves, as on a real cluster.
    lonely = "import socket\ntry:\n    print(socket.gethostbyname('solo-0.nobody'))\nexcept OSError:\n    print('no')"
    solo = {"completionMode": "Indexed", "completions": 1, "parallelism": 1, "pod": {"subdomain": "nobody"}}
    batch(client).create_namespaced_job("default", job("solo", [PY, "-c", lonely], **solo))
    wait(lambda: job_condition(kube_cluster, "solo", "Complete"), timeout=30)
    assert kube_cluster.log(kube_cluster.pods("job-name=solo")[0]["metadata"]["name"]) == "no\n"


def test_gpu_pods_stay_unschedulable(client: kubernetes.client.ApiClient, kube_cluster: Cluster) -> None:
    body = job("gpu", [PY, "-c", "pass"], container={"resources": {"limits": {"nvidia.com/gpu": 1}}})
    batch(client).create_namespaced_job("default", body)

    def unschedulable() -> dict[str, Any] | None:
        pods = kube_cluster.pods("job-name=gpu")
        conds = (pods[0].get("status") or {}).get("conditions") or [] if pods else []
        return next((c for c in conds if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    cond = wait(unschedulable)
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    assert kube_cluster.pods("job-name=gpu")[0]["status"]["phase"] == "Pending"
    assert kube_cluster.started_pods == []


def test_informer_ignores_a_write_result_that_arrives_after_the_deletion() -> None:
    """The kubelet's status PATCH can race a pod's deletion: its response must not resurrect the pod."""
    from harness.cluster import _Informer

    changed = threading.Event()
    informer = _Informer(kubernetes.client.ApiClient(), "/api/v1/pods", changed)
    pod = {"metadata": {"uid": "u1", "name": "p", "resourceVersion": "7"}}
    informer.store(pod)
    informer.store({"metadata": {**pod["metadata"], "resourceVersion": "9"}}, deleted=True)  # the DELETED event
    informer.store({"metadata": {**pod["metadata"], "resourceVersion": "8"}})  # the PATCH response, late
    assert informer.snapshot() == []
