"""kubetune-api's handlers and middleware in process (aiohttp's test server), over in-memory fakes of
the Kubernetes and S3 sides: auth, tenancy (another namespace's objects are 404), and every error
path in OpenAI's shape. The real cluster, operator, S3 and openai client: tests/e2e/test_openai_api.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from kubetune_gateway.app import make_app
from kubetune_gateway.auth import TokenTable
from kubetune_gateway.config import GatewayConfig, Tenant, parse_config
from kubetune_gateway.mapping import LABEL_API, FileRecord

pytestmark = pytest.mark.slow  # starts a (local, in-process) server

TOKEN_A, TOKEN_B, TOKEN_C = "sk-team-a-0123456789", "sk-team-b-0123456789", "sk-team-c-0123456789"
CONFIG = """
catalog: {tiny: s3://models/tiny/, small: s3://models/small/}
tenants:
  team-a: {filesUri: s3://team-a/files/, outputUri: s3://team-a/jobs/, resources: {gpus: 0}}
  team-b: {filesUri: s3://team-b/files/, outputUri: s3://team-b/jobs/}
"""
ROWS = b'{"prompt": "one", "completion": "1"}\n{"prompt": "two", "completion": "2"}\n'


class Fixed:
    def __init__(self, value: Any) -> None:
        self.value = value

    def current(self) -> Any:
        return self.value


class FakeJobs:
    """FineTuneJobs by namespace, as the apiserver would keep them."""

    def __init__(self) -> None:
        self.by_namespace: dict[str, dict[str, dict[str, Any]]] = {}
        self.cancelled: list[tuple[str, str]] = []

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        stored: dict[str, Any] = json.loads(json.dumps(manifest))
        stored["metadata"].update(uid=f"uid-{meta['name']}", creationTimestamp="2026-12-03T10:00:00Z")
        self.by_namespace.setdefault(meta["namespace"], {})[meta["name"]] = stored
        return stored

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.by_namespace.get(namespace, {}).get(name)

    async def list_all(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.by_namespace.get(namespace, {}).values())

    async def cancel(self, namespace: str, name: str) -> dict[str, Any]:
        self.cancelled.append((namespace, name))
        job = self.by_namespace[namespace][name]
        job["spec"]["cancel"] = True
        return job

    async def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return []


class FakeFiles:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[FileRecord, bytes]] = {}

    async def put(self, tenant: Tenant, record: FileRecord, path: Path) -> None:
        self.objects[(tenant.files_uri, record.id)] = (record, path.read_bytes())

    async def record(self, tenant: Tenant, file_id: str) -> FileRecord | None:
        found = self.objects.get((tenant.files_uri, file_id))
        return found[0] if found else None

    async def file_ids(self, tenant: Tenant) -> list[str]:
        return [file_id for (uri, file_id) in reversed(self.objects) if uri == tenant.files_uri]

    async def content(self, tenant: Tenant, file_id: str) -> bytes:
        return self.objects[(tenant.files_uri, file_id)][1]

    async def delete(self, tenant: Tenant, file_id: str) -> None:
        del self.objects[(tenant.files_uri, file_id)]


Scenario = Callable[[TestClient[Any, Any], FakeJobs, FakeFiles], Awaitable[None]]


def run(scenario: Scenario, max_upload_bytes: int = 1 << 20) -> None:
    config: GatewayConfig = parse_config(CONFIG, "config.yaml")
    tokens = TokenTable({TOKEN_A: "team-a", TOKEN_B: "team-b", TOKEN_C: "team-c"})
    jobs, files = FakeJobs(), FakeFiles()

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            app = make_app(
                jobs=jobs,
                files=files,
                tokens=Fixed(tokens),
                config=Fixed(config),
                pool=pool,
                max_upload_bytes=max_upload_bytes,
            )
            async with TestClient(TestServer(app)) as client:
                await scenario(client, jobs, files)

    asyncio.run(main())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def error_of(response: aiohttp.ClientResponse, status: int, param: str | None, code: str | None) -> str:
    body = await response.json()
    assert response.status == status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert (body["error"]["param"], body["error"]["code"]) == (param, code), body
    return str(body["error"]["message"])


def upload_form(
    data: bytes = ROWS, purpose: str | None = "fine-tune", filename: str = "train.jsonl"
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if purpose is not None:
        form.add_field("purpose", purpose)
    form.add_field("file", data, filename=filename, content_type="application/jsonl")
    return form


async def upload(client: TestClient[Any, Any], token: str = TOKEN_A) -> str:
    response = await client.post("/v1/files", data=upload_form(), headers=auth(token))
    assert response.status == 200, await response.text()
    return str((await response.json())["id"])


async def create(client: TestClient[Any, Any], body: dict[str, Any], token: str = TOKEN_A) -> aiohttp.ClientResponse:
    return await client.post("/v1/fine_tuning/jobs", json=body, headers=auth(token))


def test_health_needs_no_token_and_v1_needs_a_known_one() -> None:
    async def scenario(client: TestClient[Any, Any], jobs: FakeJobs, files: FakeFiles) -> None:
        assert (await (await client.get("/healthz")).text()) == "ok"
        await error_of(await client.get("/v1/fine_tuning/jobs"), 401, None, "invalid_api_key")
        response = await client.get("/v1/fine_tuning/jobs", headers=auth("sk-wrong-0123456789"))
        assert "Incorrect API key" in await error_of(response, 401, None, "invalid_api_key")
        response = await client.get("/v1/files", headers={"Authorization": f"Basic {TOKEN_A}"})
        await error_of(response, 401, None, "invalid_api_key")
        # a token whose namespace the config does not serve
        response = await client.get("/v1/fine_tuning/jobs", headers=auth(TOKEN_C))
        assert "team-c" in await error_of(response, 403, None, "tenant_not_configured")

    run(scenario)


def test_unknown_routes_and_methods_answer_in_openais_shape() -> None:
    async def scenario(client: TestClient[Any, Any], jobs: FakeJobs, files: FakeFiles) -> None:
        message = await error_of(await client.get("/v1/models", headers=auth(TOKEN_A)), 404, None, "unknown_url")
        assert "GET /v1/models" in message
        await error_of(await client.put("/v1/fine_tuning/jobs", headers=auth(TOKEN_A)), 405, None, None)
        await error_of(await client.get("/nowhere"), 404, None, "unknown_url")

    run(scenario)


def test_files_upload_list_get_content_delete() -> None:
    async def scenario(client: TestClient[Any, Any], jobs: FakeJobs, files: FakeFiles) -> None:
        file_id = await upload(client)
        second = await upload(client)
        got = await (await client.get(f"/v1/files/{file_id}", headers=auth(TOKEN_A))).json()
        assert got["filename"] == "train.jsonl" and got["bytes"] == len(ROWS) and got["purpose"] == "fine-tune"
        listed = await (await client.get("/v1/files?limit=1", headers=auth(TOKEN_A))).json()
        assert [f["id"] for f in listed["data"]] == [second] and listed["has_more"]
        ascending = await (await client.get("/v1/files?order=asc", headers=auth(TOKEN_A))).json()
        assert [f["id"] for f in ascending["data"]] == [file_id, second]
        content = await client.get(f"/v1/files/{file_id}/content", headers=auth(TOKEN_A))
        assert await content.read() == ROWS
        deleted = await (await client.delete(f"/v1/files/{file_id}", headers=auth(TOKEN_A))).json()
        assert deleted == {"id": file_id, "object": "file", "deleted": True}
        await error_of(await client.get(f"/v1/files/{file_id}", headers=auth(TOKEN_A)), 404, "file_id", "not_found")
        await error_of(await client.get("/v1/files?order=up", headers=auth(TOKEN_A)), 400, "order", None)

    run(scenario)


def test_bad_uploads_are_400_naming_the_line_or_the_parameter() -> None:
    async def scenario(client: TestClient[Any, Any], jobs: FakeJobs, files: FakeFiles) -> None:
        bad = ROWS + b'{"prompt": "three"}\n'
        response = await client.post("/v1/files", data=upload_form(bad, filename="mine.jsonl"), headers=auth(TOKEN_A))
        message = await error_of(response, 400, "file", "invalid_file_format")
        assert "mine.jsonl line 3: missing field(s) ['completion']" in message
        response = await client.post("/v1/files", data=upload_form(purpose="assistants"), headers=auth(TOKEN_A))
        await error_of(response, 400, "purpose", "invalid_value")
        response = await client.post("/v1/files", data=upload_form(purpose=None), headers=auth(TOKEN_A))
        await error_of(response, 400, "purpose", "missing_required_parameter")
        response = await client.post("/v1/files", json={"purpose": "fine-tune"}, headers=auth(TOKEN_A))
        await error_of(response, 400, "file", None)
        assert files.objects == {}

    run(scenario)


def test_an_upload_over_the_limit_is_413() -> None:
    async def scenario(client: TestClient[Any, Any], jobs: FakeJobs, files: FakeFiles) -> None:
        response = await client.post("/v1/files", data=upload_form(ROWS * 10), headers=auth(TOKEN_A))
        assert "limit of 100 bytes" in await error_of(response, 413, "file", None)

    run(scenario, max_upload_bytes=100)


def test_create_get_list_cancel_and_their_errors() -> None:
    async def scenario(client: TestClient[Any, Any], jobs: FakeJobs, files: FakeFiles) -> None:
        file_id = await upload(client)
        response = await create(client, {"model": "gpt-4o-mini", "training_file": file_id})
        message = await error_of(response, 400, "model", "model_not_found")
        assert "'gpt-4o-mini'" in message and "small, tiny" in message
        response = await create(client, {"model": "tiny", "training_file": "file-" + "z" * 24})
        await error_of(response, 400, "training_file", "invalid_file")
        response = await create(
            client, {"model": "tiny", "training_file": file_id, "hyperparameters": {"n_epochs": "x"}}
        )
        await error_of(response, 400, "hyperparameters.n_epochs", "invalid_value")
        response = await client.post(
            "/v1/fine_tuning/jobs", data=b"{nope", headers={**auth(TOKEN_A), "Content-Type": "application/json"}
        )
        await error_of(response, 400, None, "invalid_json")

        response = await create(client, {"model": "tiny", "training_file": file_id, "suffix": "bot", "seed": 3})
        job = await response.json()
        assert response.status == 200, job
        assert job["status"] == "validating_files" and job["model"] == "tiny" and job["seed"] == 3
        stored = jobs.by_namespace["team-a"][job["id"]]
        assert stored["metadata"]["labels"] == {LABEL_API: "v1"}
        assert stored["spec"]["dataset"]["train"] == f"s3://team-a/files/{file_id}.jsonl"

        got = await (await client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(TOKEN_A))).json()
        assert got["id"] == job["id"]
        listed = await (await client.get("/v1/fine_tuning/jobs", headers=auth(TOKEN_A))).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]] and listed["has_more"] is False
        events = await (await client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=auth(TOKEN_A))).json()
        assert [e["message"] for e in events["data"]] == [f"Created fine-tuning job: {job['id']}"]
        checkpoints = await client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=auth(TOKEN_A))
        assert (await checkpoints.json())["data"] == []

        cancelled = await client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth(TOKEN_A))
        assert cancelled.status == 200 and (await cancelled.json())["kubetune"]["cancel_requested"] is True
        assert jobs.cancelled == [("team-a", job["id"])]
        stored["status"] = {"phase": "Succeeded"}
        response = await client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth(TOKEN_A))
        assert "succeeded" in await error_of(response, 400, None, "job_not_cancellable")

        for path in ("", "/events", "/checkpoints"):
            response = await client.get(f"/v1/fine_tuning/jobs/ftjob-doesnotexist{path}", headers=auth(TOKEN_A))
            await error_of(response, 404, "fine_tuning_job_id", "not_found")
        response = await client.get("/v1/fine_tuning/jobs?after=ftjob-gone", headers=auth(TOKEN_A))
        await error_of(response, 400, "after", None)
        response = await client.get("/v1/fine_tuning/jobs?limit=0", headers=auth(TOKEN_A))
        await error_of(response, 400, "limit", None)

    run(scenario)


def test_another_namespaces_jobs_and_files_are_404_and_never_listed() -> None:
    async def scenario(client: TestClient[Any, Any], jobs: FakeJobs, files: FakeFiles) -> None:
        file_id = await upload(client, TOKEN_A)
        job = await (await create(client, {"model": "tiny", "training_file": file_id}, TOKEN_A)).json()
        for method, path in (
            ("GET", f"/v1/fine_tuning/jobs/{job['id']}"),
            ("GET", f"/v1/fine_tuning/jobs/{job['id']}/events"),
            ("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints"),
            ("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel"),
        ):
            response = await client.request(method, path, headers=auth(TOKEN_B))
            await error_of(response, 404, "fine_tuning_job_id", "not_found")
        for method, path in (("GET", f"/v1/files/{file_id}"), ("DELETE", f"/v1/files/{file_id}")):
            await error_of(await client.request(method, path, headers=auth(TOKEN_B)), 404, "file_id", "not_found")
        # team-b cannot train on team-a's file either
        response = await create(client, {"model": "tiny", "training_file": file_id}, TOKEN_B)
        await error_of(response, 400, "training_file", "invalid_file")
        assert (await (await client.get("/v1/fine_tuning/jobs", headers=auth(TOKEN_B))).json())["data"] == []
        assert (await (await client.get("/v1/files", headers=auth(TOKEN_B))).json())["data"] == []
        assert jobs.cancelled == [] and list(jobs.by_namespace) == ["team-a"]

    run(scenario)


@pytest.mark.parametrize(
    ("tokens", "config", "words"),
    [
        (None, CONFIG, ["tokens.json", "No such file"]),
        ('{"sk-team-a-0123456789": "Team A"}', CONFIG, ["tokens.json: entry 1", "namespace"]),
        (
            json.dumps({TOKEN_A: "team-a"}),
            "catalog: {}\ntenants: {team-a: {filesUri: 's3://team-a/f/', outputUri: 's3://team-a/o/', "
            "defaults: {training: {epochs: many}}}}",
            ["config.yaml: tenants.team-a", "defaults.training.epochs"],
        ),
    ],
)
def test_the_server_refuses_to_start_naming_the_bad_file_and_key(
    tmp_path: Path, tokens: str | None, config: str, words: list[str]
) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    if tokens is not None:
        (tmp_path / "tokens.json").write_text(tokens)
    (tmp_path / "config.yaml").write_text(config)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(str(root / d) for d in ("api", "trainer", "gateway")),
        "KUBETUNE_API_TOKENS_FILE": str(tmp_path / "tokens.json"),
        "KUBETUNE_API_CONFIG_FILE": str(tmp_path / "config.yaml"),
        "KUBETUNE_API_PORT": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "kubetune_gateway.cli"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith("kubetune-api: cannot start:"), done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert "sk-team-a" not in done.stderr
