"""kubetune-api end to end, driven by the real `openai` Python client: the server as a process
(`python -m kubetune_gateway.cli`), the emulated cluster with the test kubelet, the real kopf
operator and SeaweedFS.

One walk through what a team leaving OpenAI's hosted API does: upload the quickstart data, create
a job on the tiny model, poll it to success, read its events and checkpoints, cancel a second job,
and meet the 401, the cross-namespace 404 and the 400s naming the parameter. Each call and a
summary of its answer go to a transcript, printed and written beside the test's files (and to
$KUBETUNE_OPENAI_TRANSCRIPT when set), for the closing note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from operator_env import Kube, OperatorProcess, stage_tiny_job

from conftest import FAKE_CREDENTIALS, QUICKSTART
from harness import Cluster
from harness.finetunejob import NAMESPACE
from harness.operator_process import ROOT, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.s3]
pytest_plugins = ["operator_fixtures"]  # cluster, kube, operator

TRAIN_TIMEOUT = 240
BUCKET = "kubetune-openai"
TOKEN_A = "sk-kubetune-team-a-0123456789"  # namespace default (the operator's test Secret lives there)
TOKEN_B = "sk-kubetune-team-b-0123456789"  # namespace team-b
TERMINAL = {"succeeded", "failed", "cancelled"}
T = TypeVar("T")


def gateway_config(endpoint: str) -> dict[str, Any]:
    storage = {"endpoint": endpoint, "region": "us-east-1", "credentialsSecret": "s3-creds", "addressingStyle": "path"}
    # The tiny model's fast settings (harness.finetunejob), as an administrator would default them.
    defaults = {
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "maxSteps": 30,
            "batchSize": 4,
            "maxSeqLength": 64,
            "learningRate": 3e-3,
            "gradientCheckpointing": False,
            "checkpointEverySteps": 10,
        },
        "evaluation": {"exactMatch": False},
    }
    return {
        "catalog": {"tiny-llama": f"s3://{BUCKET}/models/tiny/"},
        "tenants": {
            NAMESPACE: {
                "filesUri": f"s3://{BUCKET}/openai/{NAMESPACE}/files/",
                "outputUri": f"s3://{BUCKET}/openai/{NAMESPACE}/jobs/",
                "storage": storage,
                "resources": {"gpus": 0},
                "defaults": defaults,
            },
            "team-b": {
                "filesUri": f"s3://{BUCKET}/openai/team-b/files/",
                "outputUri": f"s3://{BUCKET}/openai/team-b/jobs/",
                "storage": storage,
                "resources": {"gpus": 0},
                "defaults": defaults,
            },
        },
    }


class GatewayProcess:
    """`python -m kubetune_gateway.cli` with its tokens and config files, its log in a file."""

    def __init__(self, kubeconfig: Path, work: Path, endpoint: str) -> None:
        self.port = free_port()
        self.log_path = work / "kubetune-api.log"
        self.tokens_path = tokens = work / "tokens.json"
        config = work / "config.yaml"
        tokens.write_text(json.dumps({TOKEN_A: NAMESPACE, TOKEN_B: "team-b"}))
        config.write_text(json.dumps(gateway_config(endpoint)))  # JSON is YAML
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(work),
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("api", "trainer", "gateway")),
            "KUBETUNE_API_HOST": "127.0.0.1",
            "KUBETUNE_API_PORT": str(self.port),
            "KUBETUNE_API_TOKENS_FILE": str(tokens),
            "KUBETUNE_API_CONFIG_FILE": str(config),
            **{k: v for k, v in FAKE_CREDENTIALS.items() if k.startswith("AWS_")},  # the server's own S3 identity
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> GatewayProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubetune_gateway.cli"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        import urllib.request

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                    return bool(response.read() == b"ok")
            except OSError:
                return False

        wait_for(healthy, 60, "kubetune-api to answer /healthz", self.check_alive)
        return self

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"kubetune-api exited:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Transcript:
    """Each client call and a one-line summary of its answer (or its error)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def call(self, what: str, fn: Callable[[], T], summary: Callable[[T], str]) -> T:
        result = fn()
        self.lines.append(f"{what}\n    -> {summary(result)}")
        return result

    def error(self, what: str, fn: Callable[[], Any], expected: type[openai.APIStatusError]) -> openai.APIStatusError:
        with pytest.raises(expected) as caught:
            fn()
        exc = caught.value
        message = exc.body.get("message") if isinstance(exc.body, dict) else exc.message
        self.lines.append(f"{what}\n    -> HTTP {exc.status_code} code={exc.code} param={exc.param}: {message}")
        return exc

    def note(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@pytest.fixture
def gateway(kube_api: Any, tmp_path: Path, s3_endpoint: str) -> Iterator[GatewayProcess]:
    process = GatewayProcess(kube_api.kubeconfig, tmp_path, s3_endpoint).start()
    yield process
    process.stop()


@pytest.fixture
def transcript(tmp_path: Path) -> Iterator[Transcript]:
    record = Transcript()
    yield record
    text = record.text()
    print("\n===== openai client transcript =====\n" + text)
    (tmp_path / "openai-transcript.txt").write_text(text)
    if target := os.environ.get("KUBETUNE_OPENAI_TRANSCRIPT"):
        Path(target).write_text(text)


def job_line(job: Any) -> str:
    parts = [f"{job.id} status={job.status}"]
    for field in ("fine_tuned_model", "trained_tokens", "estimated_finish", "finished_at", "error"):
        value = getattr(job, field, None)
        if value is not None:
            parts.append(f"{field}={value}")
    return " ".join(parts)


def poll(client: openai.OpenAI, job_id: str, done: set[str], check: Callable[[], None]) -> tuple[Any, list[str]]:
    """Retrieve the job until its status is in `done`; the statuses seen, in order."""
    seen: list[str] = []

    def probe() -> Any:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        return job if job.status in done else None

    job = wait_for(probe, TRAIN_TIMEOUT, f"{job_id} to reach {sorted(done)}", check)
    return job, seen


def test_openai_client_files_jobs_events_checkpoints_cancel_and_errors(
    kube: Kube,
    cluster: Cluster,
    operator: OperatorProcess,
    gateway: GatewayProcess,
    s3_endpoint: str,
    tiny_model_dir: Path,
    transcript: Transcript,
    tmp_path: Path,
) -> None:
    s3 = stage_tiny_job(s3_endpoint, tiny_model_dir, BUCKET)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=TOKEN_A, max_retries=0)
    other = openai.OpenAI(base_url=gateway.base_url, api_key=TOKEN_B, max_retries=0)

    def alive() -> None:
        operator.check_alive()
        gateway.check_alive()

    # -- files ----------------------------------------------------------------------------------
    numbers = QUICKSTART / "numbers.jsonl"
    rows = sum(1 for line in numbers.read_text().splitlines() if line.strip())
    uploaded = transcript.call(
        f"client.files.create(file=numbers.jsonl [{rows} rows, {numbers.stat().st_size} bytes], purpose='fine-tune')",
        lambda: client.files.create(file=numbers.open("rb"), purpose="fine-tune"),
        lambda f: f"{f.id} filename={f.filename} bytes={f.bytes} status={f.status}",
    )
    assert uploaded.id.startswith("file-") and uploaded.bytes == numbers.stat().st_size
    assert uploaded.purpose == "fine-tune" and uploaded.filename == "numbers.jsonl"
    stored = s3.get_object(Bucket=BUCKET, Key=f"openai/{NAMESPACE}/files/{uploaded.id}.jsonl")["Body"].read()
    assert stored == numbers.read_bytes()  # in the team's own bucket, byte for byte
    listed = transcript.call("client.files.list()", lambda: client.files.list(), lambda p: f"{[f.id for f in p.data]}")
    assert [f.id for f in listed.data] == [uploaded.id]
    assert client.files.retrieve(uploaded.id).filename == "numbers.jsonl"

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "one =>", "completion": " 1"}\n{"prompt": "two =>"}\n')
    exc = transcript.error(
        "client.files.create(file=broken.jsonl [line 2 has no completion], purpose='fine-tune')",
        lambda: client.files.create(file=bad.open("rb"), purpose="fine-tune"),
        openai.BadRequestError,
    )
    assert exc.param == "file" and "broken.jsonl line 2: missing field(s) ['completion']" in exc.message
    exc = transcript.error(
        "client.files.create(file=numbers.jsonl, purpose='assistants')",
        lambda: client.files.create(file=numbers.open("rb"), purpose="assistants"),
        openai.BadRequestError,
    )
    assert exc.param == "purpose"

    # -- a job to success -------------------------------------------------------------------------
    job = transcript.call(
        "client.fine_tuning.jobs.create(model='tiny-llama', training_file=..., suffix='numbers', seed=7, "
        "hyperparameters={'n_epochs': 1, 'learning_rate_multiplier': 1.0})",
        lambda: client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=uploaded.id,
            suffix="numbers",
            seed=7,
            hyperparameters={"n_epochs": 1, "learning_rate_multiplier": 1.0},
        ),
        job_line,
    )
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.model == "tiny-llama"
    done, seen = poll(client, job.id, TERMINAL, alive)
    transcript.note(f"polled client.fine_tuning.jobs.retrieve({job.id}): statuses seen {seen}")
    transcript.lines.append(f"client.fine_tuning.jobs.retrieve({job.id!r})\n    -> {job_line(done)}")
    assert done.status == "succeeded", (done, gateway.log()[-2000:])
    assert seen[0] == "validating_files" and seen[-1] == "succeeded"
    assert done.fine_tuned_model == f"ft:tiny-llama:{NAMESPACE}:numbers:{job.id}"
    assert (done.trained_tokens or 0) > 0 and done.finished_at is not None and done.error is None
    assert done.seed == 7 and done.hyperparameters.n_epochs == 1
    extra = done.model_extra or {}
    assert extra["kubetune"]["adapter_uri"].startswith(f"s3://{BUCKET}/openai/{NAMESPACE}/jobs/{job.id}/")
    ftj = kube.custom.get_namespaced_custom_object("kubetune.io", "v1alpha1", NAMESPACE, "finetunejobs", job.id)
    assert ftj["spec"]["training"]["epochs"] == 1 and ftj["spec"]["training"]["seed"] == 7

    events = transcript.call(
        f"client.fine_tuning.jobs.list_events({job.id!r}, limit=50)",
        lambda: client.fine_tuning.jobs.list_events(job.id, limit=50),
        lambda p: "; ".join(f"[{e.level}] {e.message}" for e in reversed(p.data)),
    )
    messages = [e.message for e in events.data]
    assert messages[-1] == f"Created fine-tuning job: {job.id}"  # newest first
    assert any(m.startswith("DataValidated") for m in messages), messages
    assert any(e.type == "metrics" for e in events.data), messages
    checkpoints = transcript.call(
        f"client.fine_tuning.jobs.checkpoints.list({job.id!r})",
        lambda: client.fine_tuning.jobs.checkpoints.list(job.id),
        lambda p: ", ".join(f"step {c.step_number}: {c.fine_tuned_model_checkpoint}" for c in p.data),
    )
    steps = [c.step_number for c in checkpoints.data]
    assert steps and steps == sorted(steps, reverse=True) and steps[0] >= 20
    assert all(c.fine_tuning_job_id == job.id for c in checkpoints.data)

    # -- cancel a second job ----------------------------------------------------------------------
    second = transcript.call(
        "client.fine_tuning.jobs.create(model='tiny-llama', training_file=..., suffix='to-cancel')",
        lambda: client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, suffix="to-cancel"),
        job_line,
    )
    transcript.call(
        f"client.fine_tuning.jobs.cancel({second.id!r})",
        lambda: client.fine_tuning.jobs.cancel(second.id),
        job_line,
    )
    cancelled, seen = poll(client, second.id, TERMINAL, alive)
    transcript.lines.append(f"client.fine_tuning.jobs.retrieve({second.id!r})\n    -> {job_line(cancelled)}")
    assert cancelled.status == "cancelled" and cancelled.error is None and cancelled.finished_at is not None
    assert kube.status(second.id).phase == "Cancelled"
    exc = transcript.error(
        f"client.fine_tuning.jobs.cancel({job.id!r}) [already succeeded]",
        lambda: client.fine_tuning.jobs.cancel(job.id),
        openai.BadRequestError,
    )
    assert exc.code == "job_not_cancellable"

    page = transcript.call(
        "client.fine_tuning.jobs.list(limit=1)",
        lambda: client.fine_tuning.jobs.list(limit=1),
        lambda p: f"{[j.id for j in p.data]} has_more={p.has_more}",
    )
    assert [j.id for j in page.data] == [second.id] and page.has_more
    rest = client.fine_tuning.jobs.list(limit=1, after=second.id)
    assert [j.id for j in rest.data] == [job.id] and not rest.has_more

    # -- auth, tenancy and validation errors -------------------------------------------------------
    wrong = openai.OpenAI(base_url=gateway.base_url, api_key="sk-not-a-known-token-000", max_retries=0)
    exc = transcript.error(
        "OpenAI(api_key='sk-not-a-known-token-000').fine_tuning.jobs.list()",
        lambda: wrong.fine_tuning.jobs.list(),
        openai.AuthenticationError,
    )
    assert exc.status_code == 401 and exc.code == "invalid_api_key"
    exc = transcript.error(
        f"OpenAI(api_key=<team-b's token>).fine_tuning.jobs.retrieve({job.id!r})",
        lambda: other.fine_tuning.jobs.retrieve(job.id),
        openai.NotFoundError,
    )
    assert exc.status_code == 404
    transcript.error(
        f"OpenAI(api_key=<team-b's token>).files.retrieve({uploaded.id!r})",
        lambda: other.files.retrieve(uploaded.id),
        openai.NotFoundError,
    )
    team_b_jobs = transcript.call(
        "OpenAI(api_key=<team-b's token>).fine_tuning.jobs.list()",
        lambda: other.fine_tuning.jobs.list(),
        lambda p: f"{[j.id for j in p.data]}",
    )
    assert team_b_jobs.data == []
    exc = transcript.error(
        "client.fine_tuning.jobs.create(model='gpt-4o-mini', training_file=...)",
        lambda: client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=uploaded.id),
        openai.BadRequestError,
    )
    assert exc.param == "model" and "tiny-llama" in exc.message
    exc = transcript.error(
        "client.fine_tuning.jobs.create(..., method={'type': 'supervised', 'supervised': "
        "{'hyperparameters': {'n_epochs': 'many'}}})",
        lambda: client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=uploaded.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "many"}}},  # type: ignore[arg-type]
        ),
        openai.BadRequestError,
    )
    assert exc.param == "method.supervised.hyperparameters.n_epochs"
    exc = transcript.error(
        "client.fine_tuning.jobs.create(..., method={'type': 'dpo', ...})",
        lambda: client.fine_tuning.jobs.create(
            model="tiny-llama", training_file=uploaded.id, method={"type": "dpo", "dpo": {}}
        ),
        openai.BadRequestError,
    )
    assert exc.param == "method.type"
    transcript.error(
        "client.fine_tuning.jobs.retrieve('ftjob-doesnotexist')",
        lambda: client.fine_tuning.jobs.retrieve("ftjob-doesnotexist"),
        openai.NotFoundError,
    )

    # -- token rotation without a restart (the Secret's new version replaces the file) ------------
    rotated = "sk-kubetune-team-b-rotated-0123"
    new_tokens = gateway.tokens_path.with_suffix(".new")
    new_tokens.write_text(json.dumps({TOKEN_A: NAMESPACE, rotated: "team-b"}))
    new_tokens.replace(gateway.tokens_path)  # a new inode, as the kubelet's symlink swap gives
    exc = transcript.error(
        "[tokens.json rotated: team-b's old token removed] OpenAI(api_key=<team-b's old token>).files.list()",
        lambda: other.files.list(),
        openai.AuthenticationError,
    )
    assert exc.code == "invalid_api_key"
    renewed = openai.OpenAI(base_url=gateway.base_url, api_key=rotated, max_retries=0)
    transcript.call(
        "OpenAI(api_key=<team-b's new token>).files.list()",
        lambda: renewed.files.list(),
        lambda p: f"{[f.id for f in p.data]}",
    )

    deleted = transcript.call(
        f"client.files.delete({uploaded.id!r})",
        lambda: client.files.delete(uploaded.id),
        lambda d: f"deleted={d.deleted}",
    )
    assert deleted.deleted and client.files.list().data == []
    transcript.note(f"{len(transcript.lines)} entries; server log: {gateway.log_path}")
