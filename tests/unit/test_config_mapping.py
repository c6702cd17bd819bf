"""FineTuneJob manifest -> validated spec -> TrainerConfig.

The same pure function runs in the operator and in `kubetune run`, so these tests pin
both what the schema rejects (with the camelCase path a user would fix) and what the
mapping carries over.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubetune_api.trainer_config import RuntimeOptions, TrainerConfig, load_manifest, trainer_config_from_job
from kubetune_trainer.cli.kubetune import config_for, read_manifest
from kubetune_trainer.errors import InvalidSpec

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

MANIFEST: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "numbers", "namespace": "ml"},
    "spec": {
        "baseModel": {"uri": "s3://models/llama/"},
        "dataset": {"train": "s3://data/train.jsonl", "format": "completion", "validationSplit": 0.2},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
        "training": {
            "epochs": 4,
            "learningRate": 1e-3,
            "batchSize": 8,
            "maxSeqLength": 256,
            "packing": False,
            "completionOnlyLoss": False,
            "seed": 7,
            "lrScheduler": "linear",
        },
        "evaluation": {"exactMatch": True, "maxSamples": 10},
        "output": {"uri": "s3://runs/numbers/", "mergeAdapter": True},
        "storage": {"endpoint": "http://minio:9000", "addressingStyle": "path", "credentialsSecret": "s3-creds"},
        "resources": {"gpus": 2},
    },
}


def manifest(**spec: dict[str, Any]) -> dict[str, Any]:
    """MANIFEST with some spec sections updated (merged one level deep)."""
    data = copy.deepcopy(MANIFEST)
    for section, values in spec.items():
        data["spec"].setdefault(section, {}).update(values)
    return data


def errors(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        load_manifest(data)  # the manifest entry point: wire (camelCase) names only
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


# -- mapping ---------------------------------------------------------------------------------------


def test_fields_carried_over() -> None:
    """Every spec section reaches the trainer config unchanged; metadata names the job."""
    config = trainer_config_from_job(load_manifest(MANIFEST))
    assert isinstance(config, TrainerConfig)
    assert (config.job_name, config.namespace) == ("numbers", "ml")
    assert config.base_model_uri == "s3://models/llama/"
    assert config.dataset.train == "s3://data/train.jsonl"
    assert config.dataset.validation is None
    assert config.dataset.format.value == "completion"
    assert config.dataset.validation_split == 0.2
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (8, 16.0, 0.0)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    training = config.training
    assert (training.epochs, training.batch_size, training.max_seq_length) == (4, 8, 256)
    assert training.learning_rate == 1e-3
    assert (training.packing, training.completion_only_loss, training.seed) == (False, False, 7)
    assert training.lr_scheduler.value == "linear"
    assert (config.evaluation.exact_match, config.evaluation.max_samples) == (True, 10)
    assert (config.output.uri, config.output.merge_adapter) == ("s3://runs/numbers/", True)
    assert config.storage.endpoint == "http://minio:9000"
    assert config.storage.addressing_style == "path"
    assert config.storage.credentials_secret == "s3-creds"
    assert config.runtime == RuntimeOptions()


def test_defaults_fill_unset_fields() -> None:
    """A minimal spec gets the documented defaults."""
    data = {
        **MANIFEST,
        "spec": {
            "baseModel": {"uri": "s3://models/llama/"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": "s3://runs/x/"},
        },
    }
    config = trainer_config_from_job(load_manifest(data))
    assert config.training.epochs == "auto"
    assert config.training.batch_size == "auto"
    assert config.lora.target_modules == ["all-linear"]
    assert (config.lora.r, config.training.learning_rate, config.dataset.validation_split) == (16, 2e-4, 0.1)
    assert config.dataset.format.value == "auto"


def test_mapping_is_pure_and_round_trips() -> None:
    """Same job, same config; the serialised config (trainer.json) validates back to itself."""
    job = load_manifest(MANIFEST)
    runtime = RuntimeOptions(cache_dir="/cache", metrics_port=9090, attempt=2)
    first = trainer_config_from_job(job, runtime)
    assert first == trainer_config_from_job(job, runtime)
    assert first.runtime == runtime
    assert TrainerConfig.model_validate_json(first.to_json()) == first
    assert '"job_name": "numbers"' in first.to_json()  # trainer.json is snake_case


def test_relative_paths_resolved_against_base_dir(tmp_path: Path) -> None:
    """With base_dir (local mode), plain and file://./ relative paths become absolute; trailing / is kept."""
    data = manifest(
        baseModel={"uri": "file://./model/"},
        dataset={"train": "data/train.jsonl", "validation": "./val.jsonl"},
        output={"uri": "file://../runs/out/"},
    )
    config = trainer_config_from_job(load_manifest(data), base_dir=tmp_path)
    base = tmp_path.resolve()
    assert config.base_model_uri == f"file://{base / 'model'}/"
    assert config.dataset.train == str(base / "data" / "train.jsonl")
    assert config.dataset.validation == str(base / "val.jsonl")
    assert config.output.uri == f"file://{base.parent / 'runs' / 'out'}/"


def test_relative_paths_untouched_without_base_dir() -> None:
    """Without base_dir (the operator) nothing is resolved: there is no meaningful 'here' on a cluster."""
    data = manifest(
        baseModel={"uri": "file://./model/"},
        dataset={"train": "data/train.jsonl"},
        output={"uri": "./out/"},
    )
    config = trainer_config_from_job(load_manifest(data))
    assert config.base_model_uri == "file://./model/"
    assert config.dataset.train == "data/train.jsonl"
    assert config.output.uri == "./out/"


@pytest.mark.parametrize(
    "uri", ["s3://data/train.jsonl", "pvc://claim/data/train.jsonl", "file:///abs/train.jsonl", "/abs/train.jsonl"]
)
def test_remote_and_absolute_uris_untouched(tmp_path: Path, uri: str) -> None:
    """s3://, pvc:// and absolute paths pass through even with base_dir."""
    config = trainer_config_from_job(load_manifest(manifest(dataset={"train": uri})), base_dir=tmp_path)
    assert config.dataset.train == uri
    assert config.base_model_uri == "s3://models/llama/"
    assert config.output.uri == "s3://runs/numbers/"


def test_home_relative_path_not_joined_to_base_dir(tmp_path: Path) -> None:
    """A ~/ path means the user's home, not a folder named '~' next to the manifest."""
    config = trainer_config_from_job(
        load_manifest(manifest(dataset={"train": "~/data/train.jsonl"})), base_dir=tmp_path
    )
    assert "/~/" not in config.dataset.train


# -- schema validation -----------------------------------------------------------------------------


def test_rank_zero_rejected() -> None:
    """lora.r: 0 fails at spec.lora.r."""
    assert errors(manifest(lora={"r": 0})) == [(("spec", "lora", "r"), "Input should be greater than or equal to 1")]


@pytest.mark.parametrize("lr", [-1e-4, 0.0, 2.0])
def test_learning_rate_bounds(lr: float) -> None:
    """learningRate must lie in (0, 1], reported at the camelCase path."""
    [(loc, _)] = errors(manifest(training={"learningRate": lr}))
    assert loc == ("spec", "training", "learningRate")


@pytest.mark.parametrize(
    ("section", "field"),
    [("training", "learningRat"), ("lora", "rank"), ("dataset", "validationSplitt"), ("output", "merge")],
)
def test_unknown_field_rejected(section: str, field: str) -> None:
    """A typo is an error naming the field, never silently ignored."""
    assert errors(manifest(**{section: {field: 1}})) == [(("spec", section, field), "Extra inputs are not permitted")]


def test_snake_case_keys_rejected_in_manifest() -> None:
    """The wire format is camelCase: a snake_case key in a manifest is an unknown field, as on the apiserver."""
    data = copy.deepcopy(MANIFEST)
    data["spec"]["dataset"] = {"train": "s3://data/train.jsonl", "validation_split": 0.3}
    [(loc, msg)] = errors(data)
    assert loc == ("spec", "dataset", "validation_split")
    assert msg == "Extra inputs are not permitted"


def test_unknown_top_level_spec_field_rejected() -> None:
    """Unknown keys directly under spec are rejected too."""
    data = copy.deepcopy(MANIFEST)
    data["spec"]["gpus"] = 1
    assert errors(data) == [(("spec", "gpus"), "Extra inputs are not permitted")]


def test_all_linear_cannot_be_combined() -> None:
    """targetModules: [all-linear] must stand alone."""
    [(loc, msg)] = errors(manifest(lora={"targetModules": ["all-linear", "q_proj"]}))
    assert loc == ("spec", "lora", "targetModules")
    assert "'all-linear' cannot be combined with module names" in msg


def test_empty_target_modules_rejected() -> None:
    """At least one target module is needed."""
    [(loc, _)] = errors(manifest(lora={"targetModules": []}))
    assert loc == ("spec", "lora", "targetModules")


@pytest.mark.parametrize("value", ["auto", 1, 12, 100_000])
def test_epochs_auto_or_int(value: str | int) -> None:
    """epochs and batchSize accept 'auto' or an integer in [1, 100000]."""
    job = load_manifest(manifest(training={"epochs": value, "batchSize": value}))
    assert job.spec.training.epochs == value
    assert job.spec.training.batch_size == value


@pytest.mark.parametrize("value", [0, -3, 100_001, "five", "AUTO", 1.5])
def test_epochs_bad_values(value: Any) -> None:
    """Anything else is rejected at spec.training.epochs."""
    for loc, _ in errors(manifest(training={"epochs": value})):
        assert loc[:3] == ("spec", "training", "epochs")


@pytest.mark.parametrize(
    ("section", "key"), [("dataset", "train"), ("dataset", "validation"), ("baseModel", "uri"), ("output", "uri")]
)
@pytest.mark.parametrize("uri", ["ftp://x", "http://host/data.jsonl", "s3://A_B/x", "s3://ab/x", "", "hf://org/name"])
def test_uri_pattern(section: str, key: str, uri: str) -> None:
    """URIs must be s3:// (valid bucket), file://, pvc:// or a plain path; hub downloads are not supported."""
    [(loc, _)] = errors(manifest(**{section: {key: uri}}))
    assert loc == ("spec", section, key)


@pytest.mark.parametrize(
    "uri", ["s3://my-bucket", "s3://my.bucket/a/b.jsonl", "file:///x", "pvc://claim/data/x.jsonl", "a/b"]
)
def test_uri_pattern_accepts(uri: str) -> None:
    """The supported URI shapes validate."""
    assert load_manifest(manifest(dataset={"train": uri})).spec.dataset.train == uri


@pytest.mark.parametrize("output", ["s3://data/train.jsonl", "s3://data/train.jsonl/", "s3://models/llama"])
def test_output_must_differ_from_inputs(output: str) -> None:
    """output.uri equal to dataset.train or baseModel.uri (ignoring a trailing /) is rejected."""
    [(loc, msg)] = errors(manifest(output={"uri": output}))
    assert loc == ("spec",)
    assert "output.uri must differ from baseModel.uri and dataset.train" in msg


@pytest.mark.parametrize(
    ("section", "values", "loc"),
    [
        ("dataset", {"validationSplit": 0.6}, ("spec", "dataset", "validationSplit")),
        ("lora", {"dropout": 1.0}, ("spec", "lora", "dropout")),
        ("training", {"maxSeqLength": 8}, ("spec", "training", "maxSeqLength")),
        ("training", {"lrScheduler": "step"}, ("spec", "training", "lrScheduler")),
        ("storage", {"endpoint": "minio:9000"}, ("spec", "storage", "endpoint")),
        ("storage", {"credentialsSecret": "Bad_Name"}, ("spec", "storage", "credentialsSecret")),
        ("resources", {"gpus": -1}, ("spec", "resources", "gpus")),
    ],
)
def test_other_bounds(section: str, values: dict[str, Any], loc: tuple[str, ...]) -> None:
    """A sample of the other constraints, each reported at its wire path."""
    assert [e[0] for e in errors(manifest(**{section: values}))] == [loc]


def test_envelope_checked() -> None:
    """apiVersion, kind and metadata.name are validated too."""
    assert [e[0] for e in errors({**MANIFEST, "apiVersion": "kubetune.io/v1"})] == [("apiVersion",)]
    assert [e[0] for e in errors({**MANIFEST, "kind": "Job"})] == [("kind",)]
    assert [e[0] for e in errors({**MANIFEST, "metadata": {"name": "Bad_Name"}})] == [("metadata", "name")]


# -- manifests on disk -----------------------------------------------------------------------------


def test_quickstart_manifest_parses() -> None:
    """examples/quickstart/finetunejob.yaml is a valid FineTuneJob."""
    job = read_manifest(QUICKSTART / "finetunejob.yaml")
    assert job.metadata.name == "quickstart-numbers"
    assert job.spec.dataset.format.value == "completion"
    assert job.spec.training.epochs == 12
    assert job.spec.resources.gpus == 0


def test_quickstart_config_resolves_local_paths() -> None:
    """`kubetune run` resolves the quickstart's relative URIs against the manifest's folder."""
    config = config_for(QUICKSTART / "finetunejob.yaml", RuntimeOptions())
    here = QUICKSTART.resolve()
    assert config.base_model_uri == f"file://{here / 'model'}/"
    assert config.dataset.train == str(here / "numbers.jsonl")
    assert config.output.uri == f"file://{here.parents[1] / 'runs' / 'quickstart'}/"


def test_read_manifest_reports_camel_case_path(tmp_path: Path) -> None:
    """A schema error in a YAML manifest is an InvalidSpec naming the file and the camelCase field."""
    path = tmp_path / "job.yaml"
    text = (QUICKSTART / "finetunejob.yaml").read_text().replace("learningRate: 3.0e-3", "learningRate: -1")
    path.write_text(text)
    with pytest.raises(InvalidSpec) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "spec.training.learningRate: Input should be greater than 0" in message


def test_read_manifest_needs_exactly_one_job(tmp_path: Path) -> None:
    """Other documents are skipped; zero or two FineTuneJobs are an error."""
    job = (QUICKSTART / "finetunejob.yaml").read_text()
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + job)
    assert read_manifest(path).metadata.name == "quickstart-numbers"
    path.write_text(job + "\n---\n" + job)
    with pytest.raises(InvalidSpec, match="expected exactly one FineTuneJob document, found 2"):
        read_manifest(path)
    path.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(InvalidSpec, match=r"expected a FineTuneJob \(kubetune.io/v1alpha1\), found kind 'ConfigMap'"):
        read_manifest(path)
    path.write_text("")
    with pytest.raises(InvalidSpec, match="the file holds no YAML object"):
        read_manifest(path)


def quickstart_with(tmp_path: Path, old: str, new: str) -> Path:
    """The quickstart manifest with one edit, as a file next to the test."""
    text = (QUICKSTART / "finetunejob.yaml").read_text()
    assert old in text
    path = tmp_path / "job.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def spec_error(path: Path) -> str:
    with pytest.raises(InvalidSpec) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: ") :]


def test_typo_suggests_the_field(tmp_path: Path) -> None:
    """A misspelt field names the real one, as kubectl does."""
    path = quickstart_with(tmp_path, "learningRate:", "learningrate:")
    assert spec_error(path) == "spec.training.learningrate: unknown field; did you mean learningRate?"


def test_bad_epochs_is_one_sentence(tmp_path: Path) -> None:
    """epochs: many fails both union branches; the user reads one line, not pydantic's branch tags."""
    message = spec_error(quickstart_with(tmp_path, "epochs: 12", "epochs: many"))
    assert message == "spec.training.epochs: must be an integer or 'auto', got 'many'"
    assert "epochs.int" not in message and "literal[" not in message


def test_hf_uri_says_what_is_accepted_and_why_not_hf(tmp_path: Path) -> None:
    """A hub URI is refused with the schemes that work and the reason, not a regular expression."""
    message = spec_error(quickstart_with(tmp_path, "uri: file://./model/", "uri: hf://org/model"))
    assert message.startswith("spec.baseModel.uri: 'hf://org/model': hf:// is not accepted: ")
    assert "never downloads from a model hub" in message
    for scheme in ("s3://", "pvc://", "file://"):
        assert scheme in message
    assert "^" not in message and "pattern" not in message


def test_wrong_kind_is_named(tmp_path: Path) -> None:
    """A near-miss kind is called out, with the right spelling."""
    message = spec_error(quickstart_with(tmp_path, "kind: FineTuneJob", "kind: FinetuneJob"))
    assert message == "kind is 'FinetuneJob'; did you mean FineTuneJob? (apiVersion kubetune.io/v1alpha1)"


def test_wrong_api_version_is_named(tmp_path: Path) -> None:
    """A FineTuneJob of another apiVersion says which one it must be."""
    message = spec_error(quickstart_with(tmp_path, "apiVersion: kubetune.io/v1alpha1", "apiVersion: kubetune.io/v1"))
    assert message == "apiVersion is 'kubetune.io/v1'; a FineTuneJob's apiVersion is kubetune.io/v1alpha1"


def test_read_manifest_invalid_yaml(tmp_path: Path) -> None:
    """Broken YAML is an InvalidSpec with the line, not a parser traceback."""
    path = tmp_path / "job.yaml"
    path.write_text("kind: FineTuneJob\nspec: [unclosed\n")
    with pytest.raises(InvalidSpec, match=r"job\.yaml line \d+: invalid YAML"):
        read_manifest(path)
