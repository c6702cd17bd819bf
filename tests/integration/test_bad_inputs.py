"""A corpus of bad inputs: each one fails fast as a user error that names its culprit, and publishes nothing.

Every case runs in-process through a real entry point: `kubetune-train --config trainer.json`
(`kubetune_train.main`) or `kubetune validate|run job.yaml` (`kubetune.main`). Each asserts

    1. the exit code and reason of the right user error (10-19: never retried by the operator),
    2. a message that names the field, the file and line, or the URI at fault,
    3. that no final artifact exists at the output (no manifest.json, adapter, eval.json or
       checkpoints), listing the directory for local outputs and the prefix for S3 outputs,

and, for trainer runs, that the termination message says Failed, the reason and userError.
Rows are a handful each, and bad rows fail before any model is loaded, so the table is fast.
"""

from __future__ import annotations

import gzip
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from conftest import trainer_config, upload_dir, write_jsonl
from kubetune_api.protocol import RunStatus, RunSummary
from kubetune_trainer.cli import kubetune, kubetune_train
from kubetune_trainer.errors import (
    DataQualityFailed,
    DatasetInvalid,
    InvalidSpec,
    ModelInvalid,
    NotFound,
    S3AccessDenied,
    UserError,
)

# What a finished (or half-finished) run leaves at its output; none may exist after a user error.
FINAL_ARTIFACTS = frozenset(
    {
        "manifest.json",
        "adapter_model.safetensors",
        "adapter_config.json",
        "eval.json",
        "metrics.json",
        "loss_curve.png",
    }
)

CHAT_OK: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Answer with digits."},
        {"role": "user", "content": "two plus two?"},
        {"role": "assistant", "content": "4"},
    ]
}
INSTRUCTION_OK: dict[str, Any] = {"instruction": "Add the numbers.", "input": "2 2", "output": "4"}
COMPLETION_OK: dict[str, Any] = {"prompt": "two hundred and one =>", "completion": " 201"}


def chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages)}


def user(content: str = "two plus two?") -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: str = "4", **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


MANIFEST = """\
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: bad-inputs
spec:
  baseModel:
    uri: {model}
  dataset:
    train: ./train.jsonl
    format: auto
  lora:
    r: 4
    alpha: 8
  training:
    epochs: 1
    learningRate: 1.0e-3
    batchSize: 2
    maxSeqLength: 64
  output:
    uri: ./out/
  resources:
    gpus: 0
"""


# -- the harness -------------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One run of an entry point, and where to look for what it must not have written."""

    entry: Literal["train", "config", "manifest"]
    argv: list[str]
    expect: tuple[str, ...]  # substrings of the error message
    published: Callable[[], list[str]]  # every object/file under the output location
    termination: Path | None = None


class Ctx:
    """Builds one case's inputs under tmp_path; S3 servers are started only for cases that use them."""

    def __init__(self, tmp_path: Path, model: Path, request: pytest.FixtureRequest) -> None:
        self.tmp = tmp_path
        self.model = model
        self.request = request
        self.cache = tmp_path / "cache"
        self.out = tmp_path / "out"

    # S3 -----------------------------------------------------------------------------------------
    def s3(self) -> tuple[str, Any, str]:
        """(endpoint, client, fresh bucket) on the S3 server of the tests."""
        return (
            self.request.getfixturevalue("s3_endpoint"),
            self.request.getfixturevalue("s3_client"),
            self.request.getfixturevalue("bucket"),
        )

    def denying_endpoint(self) -> str:
        """An S3 server (SeaweedFS) that does not know the test credentials: 403 InvalidAccessKeyId."""
        self.request.getfixturevalue("s3_env")
        return str(self.request.getfixturevalue("denying_s3_endpoint"))

    @staticmethod
    def s3_listing(client: Any, bucket: str, prefix: str) -> Callable[[], list[str]]:
        def listing() -> list[str]:
            keys: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
            return sorted(keys)

        return listing

    @staticmethod
    def dir_listing(path: Path) -> Callable[[], list[str]]:
        def listing() -> list[str]:
            if not path.exists():
                return []
            return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())

        return listing

    # inputs --------------------------------------------------------------------------------------
    def data(self, rows: list[Any] | bytes, name: str = "train.jsonl") -> Path:
        path = self.tmp / name
        if isinstance(rows, bytes):
            path.write_bytes(rows)
            return path
        return write_jsonl(path, rows)

    def model_copy(self, name: str = "model") -> Path:
        copy = self.tmp / name
        shutil.copytree(self.model, copy)
        return copy

    def train(
        self,
        train_uri: str,
        *expect: str,
        model_uri: str | None = None,
        output_uri: str | None = None,
        published: Callable[[], list[str]] | None = None,
        endpoint: str | None = None,
        dataset: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> Invocation:
        """A trainer.json run; the output is a local directory unless output_uri says otherwise."""
        config = trainer_config(
            model_uri or str(self.model),
            train_uri,
            output_uri or f"{self.out}/",
            cache_dir=self.cache,
            endpoint=endpoint,
            training=training,
        )
        config["dataset"].update(dataset or {})
        config["lora"].update(lora or {})
        termination = self.tmp / "termination-log"
        config["runtime"].update({"termination_message_path": str(termination), **(runtime or {})})
        path = self.tmp / "trainer.json"
        path.write_text(json.dumps(config, indent=2))
        return Invocation(
            "train", ["--config", str(path)], expect, published or self.dir_listing(self.out), termination
        )

    def rows(self, rows: list[Any] | bytes, *expect: str, **options: Any) -> Invocation:
        return self.train(str(self.data(rows)), *expect, **options)

    def config(self, text: str | bytes | None, *expect: str) -> Invocation:
        """A trainer.json that is itself broken (None: the file does not exist)."""
        path = self.tmp / "trainer.json"
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text)
        return Invocation("config", ["--config", str(path)], expect, self.dir_listing(self.out))

    def broken_config(self, mutate: Callable[[dict[str, Any]], None], *expect: str) -> Invocation:
        """A well-formed trainer.json with one bad value (as an out-of-date operator might render)."""
        config = trainer_config(
            str(self.model), str(self.data([COMPLETION_OK] * 4)), f"{self.out}/", cache_dir=self.cache
        )
        config["runtime"]["termination_message_path"] = str(self.tmp / "termination-log")
        mutate(config)
        return self.config(json.dumps(config, indent=2), *expect)

    def manifest(
        self, text: str | bytes, *expect: str, command: str = "validate", rows: list[Any] | None = None
    ) -> Invocation:
        """A FineTuneJob manifest next to a train.jsonl (good rows unless given), output ./out/."""
        self.data(rows if rows is not None else [COMPLETION_OK] * 4)
        path = self.tmp / "job.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        argv = [command, str(path), "--cache-dir", str(self.cache)]
        if command == "run":
            argv.append("--no-progress")
        return Invocation("manifest", argv, expect, self.dir_listing(self.out))


Build = Callable[[Ctx], Invocation]


def job_edit(*pairs: tuple[str, str]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        for old, new in pairs:
            assert old in text, old
            text = text.replace(old, new)
        return text

    return edit


def manifest_case(
    edit: Callable[[str], str | bytes], *expect: str, command: str = "validate", rows: list[Any] | None = None
) -> Build:
    def build(ctx: Ctx) -> Invocation:
        return ctx.manifest(edit(MANIFEST.format(model=f"file://{ctx.model}/")), *expect, command=command, rows=rows)

    return build


def rows_case(rows: list[Any] | bytes, *expect: str, **options: Any) -> Build:
    return lambda ctx: ctx.rows(rows, *expect, **options)


# -- builders that need more than rows ---------------------------------------------------------------


def missing_train_file(ctx: Ctx) -> Invocation:
    missing = ctx.tmp / "data" / "nope.jsonl"
    return ctx.train(str(missing), f"{missing}: no such file")


def missing_model_dir(ctx: Ctx) -> Invocation:
    missing = ctx.tmp / "models" / "nope"
    return ctx.rows([COMPLETION_OK] * 4, f"{missing}/: no such directory", model_uri=f"{missing}/")


def model_config_not_json(ctx: Ctx) -> Invocation:
    model = ctx.model_copy()
    (model / "config.json").write_text("{not json")
    return ctx.rows([COMPLETION_OK] * 4, f"{model}/config.json: cannot read the model config", model_uri=str(model))


def model_without_tokenizer(ctx: Ctx) -> Invocation:
    model = ctx.model_copy()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    return ctx.rows([COMPLETION_OK] * 4, f"{model}: cannot load a tokenizer", model_uri=str(model))


def model_without_weights(ctx: Ctx) -> Invocation:
    model = ctx.model_copy()
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    return ctx.rows([COMPLETION_OK] * 4, f"{model}: cannot load a causal LM", model_uri=str(model))


def model_with_chat_template(ctx: Ctx, template: str) -> Path:
    model = ctx.model_copy()
    (model / "chat_template.jinja").write_text(template)
    return model


# Renders the message count last, so a prefix of the conversation is never a prefix of the whole.
NON_INCREMENTAL_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ messages | length }}"
# What Mistral/Gemma-style templates do with a system turn: raise_exception (a jinja2 TemplateError).
RAISING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}"
)


def non_incremental_template(ctx: Ctx) -> Invocation:
    model = model_with_chat_template(ctx, NON_INCREMENTAL_TEMPLATE)
    return ctx.rows(
        [CHAT_OK] * 4,
        "train.jsonl:1: the chat template does not render conversations incrementally",
        "training.completionOnlyLoss",
        model_uri=str(model),
    )


def raising_template(ctx: Ctx) -> Invocation:
    model = model_with_chat_template(ctx, RAISING_TEMPLATE)
    return ctx.rows([CHAT_OK] * 4, "train.jsonl", "System role not supported", model_uri=str(model))


def bad_validation_file(ctx: Ctx) -> Invocation:
    val = ctx.data([COMPLETION_OK, {"prompt": "one =>"}], name="val.jsonl")
    return ctx.rows(
        [COMPLETION_OK] * 4,
        "val.jsonl line 2: missing field(s) ['completion']",
        dataset={"validation": str(val), "validation_split": 0.0},
    )


def group_by_a_missing_field(ctx: Ctx) -> Invocation:
    """evaluation.groupBy names a key no validation row has (a typo): the data check fails before training."""
    invocation = ctx.rows(
        [{**COMPLETION_OK, "category": "numbers"}] * 4,
        "evaluation.groupBy: no row of the validation split of",
        "has the field 'categroy'; the rows' other keys: ['category']",
    )
    path = Path(invocation.argv[1])
    config = json.loads(path.read_text())
    config["evaluation"]["group_by"] = "categroy"
    path.write_text(json.dumps(config, indent=2))
    return invocation


# -- S3 ------------------------------------------------------------------------------------------------


def s3_missing_key(ctx: Ctx) -> Invocation:
    endpoint, client, bucket = ctx.s3()
    uri = f"s3://{bucket}/data/missing.jsonl"
    return ctx.train(
        uri,
        f"{uri}: does not exist",
        output_uri=f"s3://{bucket}/out/",
        published=ctx.s3_listing(client, bucket, "out/"),
        endpoint=endpoint,
    )


def s3_missing_bucket(ctx: Ctx) -> Invocation:
    endpoint, client, bucket = ctx.s3()
    uri = f"s3://{bucket}-gone/data/train.jsonl"
    return ctx.train(
        uri,
        f"{uri}: does not exist",
        output_uri=f"s3://{bucket}/out/",
        published=ctx.s3_listing(client, bucket, "out/"),
        endpoint=endpoint,
    )


def s3_output_bucket_missing(ctx: Ctx) -> Invocation:
    endpoint, client, _ = ctx.s3()
    missing = f"kt-gone-{uuid.uuid4().hex[:12]}"
    uri = f"s3://{missing}/out/"

    def published() -> list[str]:
        if missing not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            return []
        return ctx.s3_listing(client, missing, "out/")()

    return ctx.rows(
        [COMPLETION_OK] * 4,
        f"{uri}: the output cannot be written: does not exist",
        output_uri=uri,
        published=published,
        endpoint=endpoint,
    )


def s3_empty_model_prefix(ctx: Ctx) -> Invocation:
    endpoint, client, bucket = ctx.s3()
    client.upload_file(str(ctx.data([COMPLETION_OK] * 4)), bucket, "data/train.jsonl")
    return ctx.train(
        f"s3://{bucket}/data/train.jsonl",
        f"s3://{bucket}/models/typo/: no objects under this prefix",
        model_uri=f"s3://{bucket}/models/typo/",
        output_uri=f"s3://{bucket}/out/",
        published=ctx.s3_listing(client, bucket, "out/"),
        endpoint=endpoint,
    )


def s3_bad_row(ctx: Ctx) -> Invocation:
    endpoint, client, bucket = ctx.s3()
    upload_dir(client, ctx.model, bucket, "models/tiny")
    rows = ctx.data([COMPLETION_OK, COMPLETION_OK, '{"prompt": "x", "completion": " 1"'])
    client.upload_file(str(rows), bucket, "data/train.jsonl")
    return ctx.train(
        f"s3://{bucket}/data/train.jsonl",
        "train.jsonl line 3: invalid JSON",
        model_uri=f"s3://{bucket}/models/tiny/",
        output_uri=f"s3://{bucket}/out/",
        published=ctx.s3_listing(client, bucket, "out/"),
        endpoint=endpoint,
    )


def s3_denied_train(ctx: Ctx) -> Invocation:
    endpoint = ctx.denying_endpoint()
    uri = "s3://kubetune-private/data/train.jsonl"
    return ctx.train(uri, f"{uri}: access denied by S3", endpoint=endpoint)


def s3_denied_model(ctx: Ctx) -> Invocation:
    endpoint = ctx.denying_endpoint()
    uri = "s3://kubetune-private/models/tiny/"
    return ctx.rows([COMPLETION_OK] * 4, f"{uri}: access denied by S3", model_uri=uri, endpoint=endpoint)


def missing_manifest(ctx: Ctx) -> Invocation:
    path = ctx.tmp / "nope.yaml"
    return Invocation(
        "manifest",
        ["validate", str(path), "--cache-dir", str(ctx.cache)],
        (f"{path}: cannot read",),
        ctx.dir_listing(ctx.out),
    )


S3 = pytest.mark.s3


def repeated_rows_failing_on_warnings(ctx: Ctx) -> Invocation:
    """A trainer.json with preflight.fail_on_warnings (a job whose preflight the operator skipped)."""
    invocation = ctx.rows([COMPLETION_OK] * 6, "preflight.failOnWarnings is true", "DuplicateRows: 4 training rows")
    path = Path(invocation.argv[1])
    config = json.loads(path.read_text())
    config["preflight"] = {"fail_on_warnings": True}
    path.write_text(json.dumps(config, indent=2))
    return invocation


FAIL_ON_WARNINGS = job_edit(("  resources:\n", "  preflight:\n    failOnWarnings: true\n  resources:\n"))


# -- the corpus ----------------------------------------------------------------------------------------

TWO_JOBS = MANIFEST.format(model="file://./model/") + "---\n" + MANIFEST.format(model="file://./model/")
CONFIG_MAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: not-a-job\ndata:\n  a: b\n"

CASES = [
    # ---- dataset rows (DatasetInvalid, 12): the message names the file and the line ----
    pytest.param(
        DatasetInvalid,
        rows_case(
            [COMPLETION_OK, '{"prompt": "one =>", "completion": " 1"', COMPLETION_OK],
            "train.jsonl line 2: invalid JSON",
        ),
        id="malformed-json-line",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case([CHAT_OK, {"text": "no messages here"}], "train.jsonl line 2: missing field(s) ['messages']"),
        id="chat-row-without-messages",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [INSTRUCTION_OK, {"instruction": "Add.", "input": "1 1"}], "train.jsonl line 2: missing field(s) ['output']"
        ),
        id="instruction-without-output",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [{"prompt": "one =>"}, COMPLETION_OK],
            "train.jsonl line 1: missing field(s) ['completion'] for completion format",
            dataset={"format": "completion"},
        ),
        id="completion-without-completion",
    ),
    pytest.param(DatasetInvalid, rows_case(b"", "train.jsonl: the file has no rows"), id="empty-file"),
    pytest.param(DatasetInvalid, rows_case(b"\n  \n\t\n", "train.jsonl: the file has no rows"), id="blank-lines-only"),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [CHAT_OK, chat(user(), {"role": "bot", "content": "4"})], "train.jsonl line 2: messages[1].role is 'bot'"
        ),
        id="wrong-role-bot",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [chat({"role": "user", "text": "two?"}, assistant())],
            "train.jsonl line 1: messages[0] has unrecognised key(s) ['text']",
        ),
        id="unrecognised-message-key",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [CHAT_OK, CHAT_OK, chat(user(), assistant("   "))],
            "train.jsonl line 3: messages[1] is an assistant message with empty content",
        ),
        id="assistant-message-empty",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case([chat(user(), user("anyone?"))], "train.jsonl line 1: no assistant message"),
        id="no-assistant-message",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [chat(user(), assistant("4", weight=0), user("and 3+3?"), assistant("6", weight=0))],
            "train.jsonl line 1: every assistant message has weight 0",
        ),
        id="all-assistant-weights-zero",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case([chat(user(), assistant("4", weight=2))], "train.jsonl line 1: messages[1].weight must be 0 or 1"),
        id="weight-2",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [chat({"role": "user", "content": "hi", "weight": 1}, assistant())],
            "train.jsonl line 1: messages[0].weight is only allowed on assistant messages",
        ),
        id="weight-on-user-message",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [chat(assistant("Hello!"), user(), assistant())],
            "train.jsonl line 1: the conversation starts with an assistant message",
        ),
        id="conversation-starts-with-assistant",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case([CHAT_OK, {"messages": "user: hi"}], "train.jsonl line 2: 'messages' must be a non-empty list"),
        id="messages-not-a-list",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case([["two?", "4"], COMPLETION_OK], "train.jsonl line 1: expected a JSON object, got list"),
        id="non-object-row",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [{"question": "two?", "answer": "4"}],
            "train.jsonl line 1: cannot detect the format from keys ['answer', 'question']",
        ),
        id="undetectable-format",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            b'{"prompt": "caf\xe9 =>", "completion": " 1"}\n',
            "train.jsonl line 1: not UTF-8 text",
        ),
        id="non-utf8-bytes",
    ),
    # A UTF-8 byte-order mark is read (files as Excel and Notepad write them: tests/unit/test_data.py).
    pytest.param(
        DatasetInvalid,
        rows_case(
            (json.dumps(COMPLETION_OK) + "\r\n").encode("utf-16"),
            "train.jsonl: UTF-16 text (a byte-order mark says so); save it as UTF-8",
        ),
        id="utf16-bom",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            gzip.compress((json.dumps(COMPLETION_OK) + "\n").encode() * 50)[:30],
            "train.jsonl: a gzip file that does not decompress",
        ),
        id="gzip-cut-short",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [COMPLETION_OK] + [{"prompt": f"{i} =>"} for i in range(25)],
            "train.jsonl: 25 invalid row(s)",
            "train.jsonl line 2: missing field(s) ['completion']",
            "train.jsonl line 21: missing field(s)",
            "... and 5 more",
        ),
        id="many-bad-rows-reported-at-once",
    ),
    pytest.param(
        DatasetInvalid,
        rows_case(
            [{"prompt": "one two three four five six seven eight nine ten " * 4, "completion": " 1"}] * 3,
            "no row has a trainable token after truncation to training.maxSeqLength=16",
            training={"max_seq_length": 16},
        ),
        id="every-completion-truncated-away",
    ),
    pytest.param(DatasetInvalid, bad_validation_file, id="bad-row-in-validation-file"),
    pytest.param(DatasetInvalid, s3_bad_row, id="s3-malformed-json-line", marks=S3),
    # ---- URIs that do not resolve (NotFound, 14) or are forbidden (S3AccessDenied, 15) ----
    pytest.param(NotFound, missing_train_file, id="train-path-does-not-exist"),
    pytest.param(NotFound, missing_model_dir, id="model-dir-does-not-exist"),
    pytest.param(NotFound, s3_missing_key, id="s3-404-missing-key", marks=S3),
    pytest.param(NotFound, s3_missing_bucket, id="s3-404-missing-bucket", marks=S3),
    pytest.param(NotFound, s3_empty_model_prefix, id="s3-model-prefix-empty", marks=S3),
    pytest.param(
        NotFound,
        s3_output_bucket_missing,
        id="s3-output-bucket-missing",
        marks=S3,
    ),
    pytest.param(S3AccessDenied, s3_denied_train, id="s3-403-train", marks=S3),
    pytest.param(S3AccessDenied, s3_denied_model, id="s3-403-model", marks=S3),
    # ---- the model (ModelInvalid, 13) ----
    pytest.param(ModelInvalid, model_config_not_json, id="model-config-not-json"),
    pytest.param(ModelInvalid, model_without_tokenizer, id="model-without-tokenizer"),
    pytest.param(ModelInvalid, model_without_weights, id="model-without-weights"),
    pytest.param(ModelInvalid, non_incremental_template, id="chat-template-not-incremental"),
    pytest.param(
        ModelInvalid,
        raising_template,
        id="chat-template-raises",
    ),
    # ---- settings checked at run time (InvalidSpec, 11) ----
    pytest.param(
        InvalidSpec,
        rows_case(
            [COMPLETION_OK] * 4,
            "training.maxSeqLength: 1024 is above the model's limit of 512",
            training={"max_seq_length": 1024},
        ),
        id="max-seq-length-above-model-limit",
    ),
    pytest.param(
        InvalidSpec,
        rows_case(
            [COMPLETION_OK] * 4,
            "training.precision: fp16 needs a GPU",
            training={"precision": "fp16"},
            runtime={"device": "cpu"},
        ),
        id="fp16-on-cpu",
    ),
    pytest.param(
        InvalidSpec,
        rows_case(
            [COMPLETION_OK] * 4,
            "lora.targetModules:",
            "nonexistent_proj",
            lora={"target_modules": ["nonexistent_proj"]},
        ),
        id="lora-target-module-not-in-model",
    ),
    pytest.param(
        InvalidSpec,
        rows_case([COMPLETION_OK] * 4, "hf://org/tiny: unsupported URI scheme 'hf'", model_uri="hf://org/tiny"),
        id="model-uri-scheme-unsupported",
    ),
    # ---- trainer.json itself (InvalidSpec, 11) ----
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.config('{\n  "job_name": "x",\n  "lora": {r: 8}\n}\n', "trainer.json line 3: invalid JSON"),
        id="trainer-json-not-json",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.config(None, "trainer.json: cannot read the trainer config"),
        id="trainer-json-missing",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.broken_config(
            lambda c: c["lora"].update(r=0), "lora.r: Input should be greater than or equal to 1 (got 0)"
        ),
        id="trainer-json-lora-r-0",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.broken_config(
            lambda c: c["training"].update(learning_rate=-3e-4),
            "training.learning_rate: Input should be greater than 0 (got -0.0003)",
        ),
        id="trainer-json-negative-learning-rate",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.broken_config(
            lambda c: c["training"].update(epoch=3), "training.epoch: unknown field; did you mean epochs?"
        ),
        id="trainer-json-unknown-field",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.broken_config(lambda c: c["output"].update(uri="ftp://host/out/"), "output.uri"),
        id="trainer-json-output-uri-scheme",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.broken_config(
            lambda c: c["evaluation"].update(gate={"metric": "exact_match", "threshold": 0.8}),
            "evaluation.gate: metric exact_match needs generated answers",
        ),
        id="trainer-json-gate-on-exact-match-without-generation",
    ),
    pytest.param(DatasetInvalid, group_by_a_missing_field, id="group-by-a-field-no-validation-row-has"),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.config(b'{"job_name": "caf\xe9"}\n', "trainer.json", "UTF-8"),
        id="trainer-json-non-utf8",
    ),
    # ---- data quality with preflight.failOnWarnings (DataQualityFailed, 16): the warnings listed ----
    pytest.param(DataQualityFailed, repeated_rows_failing_on_warnings, id="fail-on-warnings-trainer-json"),
    pytest.param(
        DataQualityFailed,
        manifest_case(FAIL_ON_WARNINGS, "data-quality report has", "DuplicateRows: 2 training rows (66.7%)"),
        id="fail-on-warnings-validate",
    ),
    pytest.param(
        DataQualityFailed,
        manifest_case(FAIL_ON_WARNINGS, "FewTrainableTokens: only", command="run"),
        id="fail-on-warnings-run",
    ),
    # ---- FineTuneJob manifests (kubetune validate / run) ----
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("  training:\n", "  trainig:\n")), "job.yaml: spec.trainig: unknown field; did you mean training?"
        ),
        id="manifest-unknown-spec-field",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("learningRate:", "learningrate:")),
            "spec.training.learningrate: unknown field; did you mean learningRate?",
            command="run",
        ),
        id="manifest-typo-in-training-run",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(job_edit(("    r: 4\n", "\tr: 4\n")), "job.yaml line 12: invalid YAML"),
        id="manifest-invalid-yaml-tab",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(job_edit(("  name: bad-inputs\n", "  name: [bad-inputs\n")), "job.yaml line 5: invalid YAML"),
        id="manifest-invalid-yaml-unclosed-flow",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.manifest(TWO_JOBS, "job.yaml: expected exactly one FineTuneJob document, found 2"),
        id="manifest-two-finetunejobs",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.manifest(
            CONFIG_MAP, "job.yaml: expected a FineTuneJob (kubetune.io/v1alpha1), found kind 'ConfigMap'"
        ),
        id="manifest-no-finetunejob",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.manifest("", "job.yaml: the file holds no YAML object; expected a FineTuneJob", command="run"),
        id="manifest-empty-run",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("    r: 4\n", "    r: 0\n")), "spec.lora.r: Input should be greater than or equal to 1 (got 0)"
        ),
        id="manifest-lora-r-0",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("learningRate: 1.0e-3", "learningRate: -1.0e-3")),
            "spec.training.learningRate: Input should be greater than 0",
            command="run",
        ),
        id="manifest-negative-learning-rate-run",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("maxSeqLength: 64", "maxSeqLength: 1024")),
            "training.maxSeqLength: 1024 is above the model's limit of 512",
        ),
        id="manifest-max-seq-length-above-model-limit",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("kubetune.io/v1alpha1", "kubetune.io/v1")),
            "job.yaml: apiVersion is 'kubetune.io/v1'; a FineTuneJob's apiVersion is kubetune.io/v1alpha1",
        ),
        id="manifest-wrong-api-version",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("kind: FineTuneJob", "kind: FinetuneJob")),
            "job.yaml: kind is 'FinetuneJob'; did you mean FineTuneJob? (apiVersion kubetune.io/v1alpha1)",
            command="run",
        ),
        id="manifest-wrong-kind-spelling",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("epochs: 1\n", "epochs: many\n")),
            "job.yaml: spec.training.epochs: must be an integer or 'auto', got 'many'",
        ),
        id="manifest-epochs-not-a-number",
    ),
    pytest.param(
        InvalidSpec,
        lambda ctx: ctx.manifest(
            MANIFEST.format(model="hf://org/model"),
            "job.yaml: spec.baseModel.uri: 'hf://org/model': hf:// is not accepted: kubetune never downloads",
            "s3://bucket/key, pvc://claim/path, file:///path",
        ),
        id="manifest-hf-model-uri",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("uri: ./out/", "uri: ./train.jsonl")),
            "output.uri must differ from baseModel.uri and dataset.train",
        ),
        id="manifest-output-is-the-dataset",
    ),
    pytest.param(
        InvalidSpec,
        missing_manifest,
        id="manifest-file-missing",
    ),
    pytest.param(
        DatasetInvalid,
        manifest_case(
            lambda text: text,
            "train.jsonl line 2: messages[1].role is 'bot'",
            rows=[CHAT_OK, chat(user(), {"role": "bot", "content": "4"})],
        ),
        id="manifest-validate-bad-row",
    ),
    pytest.param(
        DatasetInvalid,
        manifest_case(
            lambda text: text,
            "train.jsonl line 1: cannot detect the format",
            command="run",
            rows=[{"input": "two?", "target": "4"}],
        ),
        id="manifest-run-undetectable-format",
    ),
    pytest.param(
        NotFound,
        manifest_case(job_edit(("train: ./train.jsonl", "train: ./trian.jsonl")), "trian.jsonl: no such file"),
        id="manifest-train-path-typo",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            lambda text: text.replace("name: bad-inputs", "name: bad-inputs  # caf\xe9").encode("latin-1"),
            "job.yaml",
            "UTF-8",
        ),
        id="manifest-non-utf8",
    ),
    pytest.param(
        InvalidSpec,
        manifest_case(
            job_edit(("    learningRate: 1.0e-3\n", "    learningRate: 1.0e-3\n    learningRate: 5.0e-1\n")),
            "job.yaml",
            "learningRate",
        ),
        id="manifest-duplicate-key",
    ),
]


def error_message(invocation: Invocation, error: type[UserError], stdout: str, stderr: str) -> str:
    """The message the user sees, after checking the failure record each entry point leaves."""
    if invocation.entry == "train":
        assert invocation.termination is not None
        assert invocation.termination.is_file(), "no termination message was written"
        summary = RunSummary.model_validate_json(invocation.termination.read_text())
        assert summary.status == RunStatus.FAILED, summary
        assert summary.reason == error.reason, summary
        assert summary.user_error is True, summary
        assert summary.exit_code == error.exit_code, summary
        assert summary.message is not None and summary.message.startswith(f"{error.reason} (user error): "), summary
        return summary.message
    if invocation.entry == "config":
        # No config, so no termination-message path: kubetune-train reports on stderr.
        records = [RunSummary.model_validate_json(line) for line in stderr.splitlines() if line.startswith("{")]
        assert len(records) == 1, stderr
        assert records[0].status == RunStatus.FAILED, records[0]
        assert records[0].reason == error.reason, records[0]
        assert records[0].message is not None
        return records[0].message
    assert f"{error.reason} (user error)" in stdout + stderr, stdout + stderr
    return stdout + stderr


def final_artifacts(published: list[str]) -> list[str]:
    return [
        name
        for name in published
        if Path(name).name in FINAL_ARTIFACTS or Path(name).parts[:1] in {("checkpoints",), ("merged",)}
    ]


@pytest.mark.parametrize(("error", "build"), CASES)
def test_bad_input_is_a_user_error_that_names_the_culprit_and_publishes_nothing(
    error: type[UserError],
    build: Build,
    tmp_path: Path,
    tiny_model_dir: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert issubclass(error, UserError)
    assert 10 <= error.exit_code <= 19
    invocation = build(Ctx(tmp_path, tiny_model_dir, request))

    main = kubetune.main if invocation.entry == "manifest" else kubetune_train.main
    code = main(invocation.argv)
    stdout, stderr = capsys.readouterr()

    assert code == error.exit_code, f"exit {code}, expected {error.exit_code} ({error.reason})\n{stderr[-3000:]}"
    message = error_message(invocation, error, stdout, stderr)
    for expected in invocation.expect:
        assert expected in message, f"{expected!r} not in the message:\n{message}"
    published = invocation.published()
    assert final_artifacts(published) == [], f"artifacts published despite the failure: {published}"


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 24
    assert len({case.id for case in CASES}) == len(CASES)


def test_invalid_trainer_json_still_writes_the_termination_message(
    tmp_path: Path, tiny_model_dir: Path, request: pytest.FixtureRequest
) -> None:
    ctx = Ctx(tmp_path, tiny_model_dir, request)
    invocation = ctx.broken_config(lambda c: c["lora"].update(r=0), "lora.r")
    assert kubetune_train.main(invocation.argv) == InvalidSpec.exit_code
    termination = tmp_path / "termination-log"
    assert termination.is_file(), "no termination message was written"
    summary = RunSummary.model_validate_json(termination.read_text())
    assert summary.status == RunStatus.FAILED
    assert summary.reason == InvalidSpec.reason
    assert summary.user_error is True
    assert summary.message is not None and "lora.r" in summary.message
