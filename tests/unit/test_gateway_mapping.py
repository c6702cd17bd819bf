"""kubetune-api's pure parts: config and tokens parsing, request validation, request -> FineTuneJob,
FineTuneJob -> OpenAI objects, pages; and every error each can give, with the parameter it names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.spec import FineTuneJob
from kubetune_gateway.auth import bearer_token, parse_tokens
from kubetune_gateway.config import GatewayConfig, Tenant, parse_config
from kubetune_gateway.errors import ApiError, param_path
from kubetune_gateway.ids import is_file_id, is_job_id, new_file_id, new_job_id
from kubetune_gateway.mapping import (
    ANN_MODEL,
    ANN_SUFFIX,
    LABEL_API,
    STATUS_OF_PHASE,
    FileRecord,
    build_finetunejob,
    checkpoint_objects,
    file_object,
    job_events,
    job_object,
    newest_first,
    page,
    parse_create_request,
    parse_limit,
    upload_filename,
)
from kubetune_gateway.settings import GatewaySettings
from kubetune_gateway.uploads import check_purpose, check_rows
from kubetune_gateway.watched import WatchedFile

CONFIG_YAML = """
catalog:
  tiny: s3://models/tiny/
tenants:
  team-a:
    filesUri: s3://team-a-data/files
    outputUri: s3://team-a-data/jobs/
    storage: {endpoint: "http://127.0.0.1:9000", region: us-east-1, credentialsSecret: s3-creds, addressingStyle: path}
    resources: {gpus: 2, nodes: 2}
    defaults: {training: {learningRate: 0.003, maxSeqLength: 64}, lora: {r: 8}}
"""
TRAIN_ID = "file-" + "a" * 24
VALID_ID = "file-" + "b" * 24
JOB_ID = "ftjob-" + "c" * 24


@pytest.fixture
def config() -> GatewayConfig:
    return parse_config(CONFIG_YAML, "config.yaml")


@pytest.fixture
def tenant(config: GatewayConfig) -> Tenant:
    return config.tenants["team-a"]


def expect(exc: pytest.ExceptionInfo[ApiError], status: int, param: str | None, *words: str) -> None:
    error = exc.value
    assert error.status == status and error.param == param, error.body()
    for word in words:
        assert word in error.message, error.message


def build(tenant: Tenant, body: dict[str, Any], seed: int = 7) -> dict[str, Any]:
    request = parse_create_request({"model": "tiny", "training_file": TRAIN_ID, **body})
    return build_finetunejob(
        request, job_id=JOB_ID, namespace="team-a", tenant=tenant, model_uri="s3://models/tiny/", seed=seed
    )


# -- settings, config, tokens ----------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_API_PORT", "9001")
    monkeypatch.setenv("KUBETUNE_API_TOKENS_FILE", "/t/tokens.json")
    settings = GatewaySettings()
    assert settings.port == 9001 and settings.tokens_file == Path("/t/tokens.json")
    assert settings.host == "0.0.0.0" and settings.config_file == Path("/etc/kubetune-api/config/config.yaml")
    monkeypatch.setenv("KUBETUNE_API_PORT", "0")
    with pytest.raises(ValueError, match="port"):
        GatewaySettings()


def test_config_normalises_prefixes_and_builds_the_tenant_base(tenant: Tenant) -> None:
    assert tenant.files_uri == "s3://team-a-data/files/"
    base = tenant.spec_base()
    assert base["storage"] == {
        "endpoint": "http://127.0.0.1:9000",
        "region": "us-east-1",
        "credentialsSecret": "s3-creds",
        "addressingStyle": "path",
    }
    assert base["resources"] == {"gpus": 2, "nodes": 2} and base["lora"] == {"r": 8}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("catalog: [", ["config.yaml: not YAML"]),
        ("- a\n- b", ["expected a mapping with keys catalog and tenants"]),
        ("tenants: {}", ["catalog"]),
        ("catalog: {m: 'hf://org/m'}\ntenants: {}", ["catalog.m", "hf:// is not accepted"]),
        (
            "catalog: {}\ntenants: {team-a: {filesUri: 'http://x/', outputUri: 's3://bkt/o/'}}",
            ["tenants.team-a.filesUri", "not a supported URI"],
        ),
        (
            "catalog: {}\ntenants: {team-a: {filesUri: 'file:///x/', outputUri: 's3://bkt/o/'}}",
            ["tenants.team-a.filesUri", "must be an s3:// URI"],
        ),
        (
            "catalog: {}\ntenants: {Team_A: {filesUri: 's3://bkt/f/', outputUri: 's3://bkt/o/'}}",
            ["tenants.Team_A", "RFC 1123"],
        ),
        (
            "catalog: {}\ntenants: {team-a: {filesUri: 's3://bkt/f/', outputUri: 's3://bkt/o/', "
            "defaults: {training: {maxSeqLength: 8}}}}",
            ["tenants.team-a", "defaults.training.maxSeqLength"],
        ),
        (
            "catalog: {}\ntenants: {team-a: {filesUri: 's3://bkt/f/', outputUri: 's3://bkt/o/', "
            "defaults: {output: {uri: 's3://bkt/x/'}}}}",
            ["tenants.team-a.defaults", "['output'] are set by the server"],
        ),
        (
            "catalog: {}\ntenants: {team-a: {filesUri: 's3://bkt/f/', outputUri: 's3://bkt/o/', gpus: 1}}",
            ["tenants.team-a.gpus", "unknown field"],
        ),
    ],
)
def test_config_errors_name_the_file_and_key(text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as exc:
        parse_config(text, "config.yaml")
    for word in words:
        assert word in str(exc.value), str(exc.value)


def test_tokens_map_to_namespaces() -> None:
    table = parse_tokens(json.dumps({"sk-team-a-0123456789": "team-a", "sk-team-b-0123456789": "team-b"}), "t")
    assert table.namespace_for("sk-team-a-0123456789") == "team-a"
    assert table.namespace_for("sk-team-b-0123456789") == "team-b"
    assert table.namespace_for("sk-team-a-012345678") is None and table.namespace_for("") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", ["tokens.json: not JSON"]),
        ('["a"]', ["expected a JSON object"]),
        ('{"short": "team-a"}', ["entry 1", "at least 16 characters"]),
        ('{"sk-0123456789abcdef": "Team A"}', ["entry 1", "namespace"]),
        ('{"sk-0123456789abcdef": "team-a", "sk-0123456789abcdeX": 3}', ["entry 2", "namespace"]),
    ],
)
def test_token_file_errors_name_the_entry_never_the_token(text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as exc:
        parse_tokens(text, "tokens.json")
    for word in words:
        assert word in str(exc.value)
    assert "sk-0123456789" not in str(exc.value)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "sk-abc"])
def test_a_missing_bearer_token_is_401_invalid_api_key(header: str | None) -> None:
    with pytest.raises(ApiError) as exc:
        bearer_token(header)
    assert exc.value.status == 401 and exc.value.body()["error"]["code"] == "invalid_api_key"
    assert bearer_token("Bearer sk-abc ") == "sk-abc"


def test_watched_file_rereads_on_change_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"sk-first-0123456789": "team-a"}))
    watched = WatchedFile(path, parse_tokens)
    assert watched.load().namespace_for("sk-first-0123456789") == "team-a"
    path.write_text(json.dumps({"sk-second-0123456789": "team-b"}))
    os.utime(path, ns=(1, 10**18))  # a new mtime even on a coarse clock
    current = watched.current()
    assert current.namespace_for("sk-second-0123456789") == "team-b"
    assert current.namespace_for("sk-first-0123456789") is None  # rotated out without a restart
    path.write_text("{ not json")
    os.utime(path, ns=(1, 2 * 10**18))
    assert watched.current().namespace_for("sk-second-0123456789") == "team-b"
    fresh = WatchedFile(path, parse_tokens)
    with pytest.raises(ValueError, match="not JSON"):  # at start-up: no last good version, fail fast
        fresh.load()


# -- ids and params --------------------------------------------------------------------------------


def test_ids_are_openai_shaped_and_valid_kubernetes_names() -> None:
    job_id, file_id = new_job_id(), new_file_id()
    assert is_job_id(job_id) and is_file_id(file_id) and not is_job_id(file_id)
    FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": job_id},
            "spec": {
                "baseModel": {"uri": "s3://mmm/m/"},
                "dataset": {"train": "s3://ddd/t"},
                "output": {"uri": "s3://ooo/o/"},
            },
        }
    )
    assert len(f"{job_id}-train-100") <= 63
    assert not is_job_id("ftjob-../x") and not is_file_id("file-ABC")


def test_param_path_follows_the_input_not_pydantics_union_tags() -> None:
    given = {"hyperparameters": {"n_epochs": "many"}, "messages": [{"a": 1}]}
    assert param_path(("hyperparameters", "n_epochs", "int"), given) == "hyperparameters.n_epochs"
    assert param_path(("messages", 0, "a"), given) == "messages[0].a"
    assert param_path(("training_file",), given) == "training_file"


# -- create request --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "tiny"}, "training_file", ["Missing required parameter"]),
        ({"training_file": TRAIN_ID}, "model", ["Missing required parameter"]),
        ({"model": "tiny", "training_file": "train.jsonl"}, "training_file", ["not a file id"]),
        ({"model": "tiny", "training_file": TRAIN_ID, "validation_file": "x"}, "validation_file", ["not a file id"]),
        (
            {"model": "tiny", "training_file": TRAIN_ID, "hyperparameters": {"n_epochs": "many"}},
            "hyperparameters.n_epochs",
            ["'auto'", "integer"],
        ),
        (
            {"model": "tiny", "training_file": TRAIN_ID, "hyperparameters": {"n_epochs": 0}},
            "hyperparameters.n_epochs",
            ["between 1 and 100000"],
        ),
        (
            {"model": "tiny", "training_file": TRAIN_ID, "hyperparameters": {"batch_size": 1000}},
            "hyperparameters.batch_size",
            ["between 1 and 256"],
        ),
        (
            {"model": "tiny", "training_file": TRAIN_ID, "hyperparameters": {"learning_rate_multiplier": -1}},
            "hyperparameters.learning_rate_multiplier",
            ["greater than 0"],
        ),
        (
            {"model": "tiny", "training_file": TRAIN_ID, "hyperparameters": {"learning_rate": 0.1}},
            "hyperparameters.learning_rate",
            ["Unrecognized request argument"],
        ),
        (
            {
                "model": "tiny",
                "training_file": TRAIN_ID,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "big"}}},
            },
            "method.supervised.hyperparameters.batch_size",
            ["'auto'"],
        ),
        (
            {"model": "tiny", "training_file": TRAIN_ID, "method": {"type": "dpo", "dpo": {}}},
            "method.type",
            ["'dpo' is not supported", "supervised"],
        ),
        (
            {
                "model": "tiny",
                "training_file": TRAIN_ID,
                "hyperparameters": {"n_epochs": 1},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            },
            "hyperparameters",
            ["not both"],
        ),
        (
            {
                "model": "tiny",
                "training_file": TRAIN_ID,
                "integrations": [{"type": "wandb", "wandb": {"project": "p"}}],
            },
            "integrations",
            ["integrations are not supported"],
        ),
        ({"model": "tiny", "training_file": TRAIN_ID, "seed": -1}, "seed", ["greater than or equal to 0"]),
        ({"model": "tiny", "training_file": TRAIN_ID, "suffix": "x" * 65}, "suffix", ["64"]),
        ({"model": "tiny", "training_file": TRAIN_ID, "suffix": "a b"}, "suffix", ["letters, digits"]),
        ({"model": "tiny", "training_file": TRAIN_ID, "temperature": 1}, "temperature", ["Unrecognized"]),
        (["not", "an", "object"], None, ["JSON object"]),
    ],
)
def test_bad_create_requests_are_400_naming_the_parameter(body: Any, param: str | None, words: list[str]) -> None:
    with pytest.raises(ApiError) as exc:
        parse_create_request(body)
    expect(exc, 400, param, *words)
    assert exc.value.body()["error"]["type"] == "invalid_request_error"


def test_a_request_becomes_a_finetunejob_in_the_tenants_namespace_and_buckets(tenant: Tenant) -> None:
    manifest = build(
        tenant,
        {
            "validation_file": VALID_ID,
            "suffix": "support-bot",
            "metadata": {"team": "support"},
            "hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5},
        },
        seed=1234,
    )
    job = FineTuneJob.model_validate(manifest)  # a manifest the apiserver's schema accepts
    assert job.metadata.name == JOB_ID and job.metadata.namespace == "team-a"
    assert manifest["metadata"]["labels"] == {LABEL_API: "v1"}
    annotations = manifest["metadata"]["annotations"]
    assert annotations[ANN_MODEL] == "tiny" and annotations[ANN_SUFFIX] == "support-bot"
    spec = job.spec
    assert spec.base_model.uri == "s3://models/tiny/"
    assert spec.dataset.train == f"s3://team-a-data/files/{TRAIN_ID}.jsonl"
    assert spec.dataset.validation == f"s3://team-a-data/files/{VALID_ID}.jsonl"
    assert spec.output.uri == f"s3://team-a-data/jobs/{JOB_ID}/"
    assert spec.storage.credentials_secret == "s3-creds" and spec.resources.gpus == 2
    assert spec.training.epochs == 2 and spec.training.seed == 1234
    # 8 examples per optimizer step over 2 GPUs x 2 nodes: 2 unpacked rows per process, no accumulation
    assert (spec.training.batch_size, spec.training.packing, spec.training.gradient_accumulation_steps) == (2, False, 1)
    assert spec.training.learning_rate == pytest.approx(0.0015)  # the tenant's base 3e-3 x 0.5
    assert spec.training.max_seq_length == 64 and spec.lora.r == 8  # tenant defaults kept


def test_auto_hyperparameters_keep_kubetunes_auto_and_the_method_form_is_the_same(tenant: Tenant) -> None:
    auto = build(tenant, {"hyperparameters": {"n_epochs": "auto", "batch_size": "auto"}})["spec"]["training"]
    assert "epochs" not in auto and "batchSize" not in auto and auto["learningRate"] == 0.003
    top = build(tenant, {"hyperparameters": {"n_epochs": 3}})
    method = build(tenant, {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}})
    assert top["spec"] == method["spec"]


def test_bad_mapped_hyperparameters_name_the_request_parameter(tenant: Tenant) -> None:
    with pytest.raises(ApiError) as exc:
        build(tenant, {"hyperparameters": {"batch_size": 6}})
    expect(exc, 400, "hyperparameters.batch_size", "not a multiple of 4", "resources.gpus x resources.nodes")
    with pytest.raises(ApiError) as exc:  # 3e-3 x 1000 is a learning rate above 1
        build(
            tenant,
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 1000}}}},
        )
    expect(exc, 400, "method.supervised.hyperparameters.learning_rate_multiplier", "learningRate")


def test_the_request_wins_over_tenant_defaults_and_an_invalid_spec_from_the_config_is_a_server_error() -> None:
    config = parse_config(
        "catalog: {}\ntenants: {team-a: {filesUri: 's3://bkt/f/', outputUri: 's3://bkt/o/', "
        "defaults: {dataset: {train: 's3://bkt/f/x'}}}}",
        "c",
    )
    request = parse_create_request({"model": "m", "training_file": TRAIN_ID})
    # the request's training file wins over a tenant's dataset default: the spec stays valid
    manifest = build_finetunejob(
        request, job_id=JOB_ID, namespace="team-a", tenant=config.tenants["team-a"], model_uri="s3://bkt/o/", seed=1
    )
    with pytest.raises(ApiError) as exc:
        build_finetunejob(
            request,
            job_id=JOB_ID,
            namespace="team-a",
            tenant=config.tenants["team-a"],
            model_uri="s3://bkt/o/" + JOB_ID,
            seed=1,
        )
    assert manifest["spec"]["dataset"]["train"].endswith(f"{TRAIN_ID}.jsonl")
    assert exc.value.status == 500 and exc.value.type == "server_error" and "namespace team-a" in exc.value.message


# -- FineTuneJob -> OpenAI objects -----------------------------------------------------------------


def ftj(phase: str | None = None, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": JOB_ID,
            "namespace": "team-a",
            "uid": "u-1",
            "creationTimestamp": "2026-12-03T10:00:00Z",
            "labels": {LABEL_API: "v1"},
            "annotations": {
                ANN_MODEL: "tiny",
                ANN_SUFFIX: "bot",
                "kubetune.io/openai-training-file": TRAIN_ID,
                "kubetune.io/openai-hyperparameters": json.dumps({"n_epochs": "auto", "batch_size": 8}),
            },
        },
        "spec": {"training": {"seed": 42}, "output": {"uri": "s3://b/jobs/x/"}},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, **status}
    return obj


@pytest.mark.parametrize(("phase", "expected"), [(None, "validating_files"), *STATUS_OF_PHASE.items()])
def test_every_phase_has_an_openai_status(phase: str | None, expected: str) -> None:
    assert job_object(ftj(phase))["status"] == expected


def test_a_succeeded_job_names_its_model_and_tokens() -> None:
    job = job_object(
        ftj(
            "Succeeded",
            completionTime="2026-12-03T10:05:00Z",
            trainedTokens=12345,
            preflight={"epochs": 3},
            artifacts={"adapterUri": "s3://b/jobs/x/adapter/"},
        )
    )
    assert job["object"] == "fine_tuning.job" and job["id"] == JOB_ID and job["model"] == "tiny"
    assert job["fine_tuned_model"] == f"ft:tiny:team-a:bot:{JOB_ID}"
    assert job["trained_tokens"] == 12345 and job["error"] is None and job["seed"] == 42
    assert job["created_at"] == 1796292000 and job["finished_at"] == 1796292300
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": "auto"}
    assert job["training_file"] == TRAIN_ID and job["organization_id"] == "team-a"
    assert job["kubetune"]["adapter_uri"] == "s3://b/jobs/x/adapter/"


def test_a_failed_job_carries_the_reason_and_the_parameter_it_is_about() -> None:
    job = job_object(
        ftj(
            "Failed",
            error={"reason": "DatasetInvalid", "message": "train.jsonl line 3: invalid JSON"},
            completionTime="2026-12-03T10:01:00Z",
        )
    )
    assert job["error"] == {
        "code": "DatasetInvalid",
        "message": "train.jsonl line 3: invalid JSON",
        "param": "training_file",
    }
    assert job["fine_tuned_model"] is None and job["trained_tokens"] is None


def test_a_running_job_estimates_its_finish_from_the_last_report() -> None:
    job = job_object(ftj("Running", progress={"etaSeconds": 60, "lastUpdateTime": "2026-12-03T10:02:00Z"}))
    assert job["estimated_finish"] == 1796292120 + 60 and job["finished_at"] is None
    assert job_object(ftj("Queued", progress={"etaSeconds": 60}))["estimated_finish"] is None


def test_a_cancelled_job_finishes_at_its_last_condition_change() -> None:
    condition = {
        "type": "Failed",
        "status": "True",
        "reason": "UserCancelled",
        "lastTransitionTime": "2026-12-03T10:03:00Z",
    }
    job = job_object(ftj("Cancelled", conditions=[condition]))
    assert job["status"] == "cancelled" and job["finished_at"] == 1796292180 and job["error"] is None


def test_events_are_the_jobs_own_newest_first_with_synthetic_creation_and_metrics() -> None:
    events = [
        {
            "metadata": {"name": "e1", "uid": "ev-1"},
            "involvedObject": {"kind": "FineTuneJob", "name": JOB_ID, "uid": "u-1"},
            "reason": "DataValidated",
            "message": "900 rows",
            "type": "Normal",
            "lastTimestamp": "2026-12-03T10:01:00Z",
        },
        {
            "metadata": {"name": "e2", "uid": "ev-2"},
            "involvedObject": {"kind": "FineTuneJob", "name": JOB_ID, "uid": "u-1"},
            "reason": "Unschedulable",
            "message": "no GPU",
            "type": "Warning",
            "eventTime": "2026-12-03T10:02:00Z",
        },
        {  # a previous job of the same name
            "metadata": {"name": "e3", "uid": "ev-3"},
            "involvedObject": {"kind": "FineTuneJob", "name": JOB_ID, "uid": "u-0"},
            "reason": "Old",
            "type": "Normal",
        },
    ]
    job = ftj(
        "Running",
        progress={"step": 5, "totalSteps": 30, "lastUpdateTime": "2026-12-03T10:03:00Z"},
        metrics={"trainLoss": 1.5},
    )
    listed = job_events(job, events)
    assert [e["id"] for e in listed] == [
        f"ftevent-{JOB_ID}-metrics-5",
        "ftevent-ev-2",
        "ftevent-ev-1",
        f"ftevent-{JOB_ID}-created",
    ]
    metrics, warning, info, created = listed
    assert metrics["type"] == "metrics" and metrics["data"]["train_loss"] == 1.5 and metrics["data"]["step"] == 5
    assert warning["level"] == "warn" and warning["message"] == "Unschedulable: no GPU"
    assert info["level"] == "info" and info["created_at"] == 1796292060
    assert created["message"] == f"Created fine-tuning job: {JOB_ID}"
    assert all(e["object"] == "fine_tuning.job.event" for e in listed)


def test_events_in_one_second_keep_their_order_and_the_creation_stays_first() -> None:
    def event(name: str, when: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "uid": name},
            "involvedObject": {"kind": "FineTuneJob", "name": JOB_ID},
            "reason": name,
            "type": "Normal",
            "eventTime": when,
            "lastTimestamp": when[:19] + "Z",
        }

    events = [  # kopf's eventTime carries microseconds; lastTimestamp only seconds
        event("Validating", "2026-12-03T10:00:00.200000Z"),
        event("Running", "2026-12-03T10:00:00.700000Z"),
        event("Exporting", "2026-12-03T10:00:00.900000Z"),
    ]
    listed = [e["id"] for e in job_events(ftj("Exporting"), events)]
    assert listed == ["ftevent-Exporting", "ftevent-Running", "ftevent-Validating", f"ftevent-{JOB_ID}-created"]


def test_checkpoints_newest_first_with_their_uri() -> None:
    job = ftj(
        "Running",
        checkpoints=[
            {"step": 10, "uri": "s3://b/jobs/x/checkpoints/step-10/", "time": "2026-12-03T10:01:00Z"},
            {"step": 20, "uri": "s3://b/jobs/x/checkpoints/step-20/", "time": "2026-12-03T10:02:00Z"},
        ],
    )
    listed = checkpoint_objects(job)
    assert [c["step_number"] for c in listed] == [20, 10]
    assert listed[0] == {
        "id": f"ftckpt-{JOB_ID}-step-20",
        "object": "fine_tuning.job.checkpoint",
        "created_at": 1796292120,
        "fine_tuned_model_checkpoint": f"ft:tiny:team-a:bot:{JOB_ID}:ckpt-step-20",
        "fine_tuning_job_id": JOB_ID,
        "step_number": 20,
        "metrics": {"step": 20.0},
        "kubetune": {"uri": "s3://b/jobs/x/checkpoints/step-20/"},
    }


def test_file_objects_and_upload_names() -> None:
    record = FileRecord(id=TRAIN_ID, bytes=10, created_at=5, filename="train.jsonl", purpose="fine-tune", rows=2)
    assert file_object(record) == {
        "id": TRAIN_ID,
        "object": "file",
        "bytes": 10,
        "created_at": 5,
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }
    assert upload_filename("../../etc/passwd") == "passwd" and upload_filename("C:\\data\\t.jsonl") == "t.jsonl"
    assert upload_filename(None) == "upload.jsonl"


# -- lists -----------------------------------------------------------------------------------------


def test_pages_follow_the_after_cursor() -> None:
    items = [{"id": f"i{n}"} for n in range(5)]
    first = page(items, None, 2)
    assert [i["id"] for i in first["data"]] == ["i0", "i1"] and first["has_more"] and first["last_id"] == "i1"
    second = page(items, first["last_id"], 2)
    assert [i["id"] for i in second["data"]] == ["i2", "i3"] and second["has_more"]
    last = page(items, "i3", 2)
    assert [i["id"] for i in last["data"]] == ["i4"] and not last["has_more"] and last["object"] == "list"
    assert page([], None, 2) == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    with pytest.raises(ApiError) as exc:
        page(items, "gone", 2)
    expect(exc, 400, "after", "'gone'")


@pytest.mark.parametrize("raw", ["0", "101", "ten", "-1"])
def test_bad_limits_are_400_naming_limit(raw: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_limit(raw, 20, 100)
    expect(exc, 400, "limit", "between 1 and 100")
    assert parse_limit(None, 20, 100) == 20 and parse_limit("100", 20, 100) == 100


def test_jobs_are_listed_newest_first() -> None:
    older, newer = ftj(), ftj()
    newer["metadata"] = {**newer["metadata"], "name": "ftjob-b", "creationTimestamp": "2026-12-03T11:00:00Z"}
    assert [j["metadata"]["name"] for j in newest_first([older, newer])] == ["ftjob-b", JOB_ID]


# -- uploads ---------------------------------------------------------------------------------------


def test_uploaded_rows_are_checked_as_the_preflight_checks_them(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "one", "completion": "1"}\n{"prompt": "two", "completion": "2"}\n')
    checked = check_rows(good, "numbers.jsonl")
    assert (checked.rows, checked.format) == (2, "completion")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "one", "completion": "1"}\n{not json\n{"prompt": "x", "completion": ""}\n')
    with pytest.raises(ApiError) as exc:
        check_rows(bad, "my-data.jsonl")
    expect(exc, 400, "file", "my-data.jsonl line 2: invalid JSON", "my-data.jsonl line 3: field 'completion' is empty")
    assert exc.value.code == "invalid_file_format"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ApiError, match="no rows"):
        check_rows(empty, "empty.jsonl")


@pytest.mark.parametrize(
    ("purpose", "words"), [(None, ["Missing required parameter"]), ("assistants", ["'fine-tune'"])]
)
def test_only_fine_tune_files_are_accepted(purpose: str | None, words: list[str]) -> None:
    with pytest.raises(ApiError) as exc:
        check_purpose(purpose)
    expect(exc, 400, "purpose", *words)
    assert check_purpose("fine-tune") == "fine-tune"
