"""The aiohttp application: thin handlers over `mapping` (pure), `Jobs` (Kubernetes) and `Files` (S3).

Every /v1 request carries a bearer token that maps to one namespace; every read and write is in
that namespace and that tenant's bucket only. Another namespace's job or file is a 404, exactly as
a job that does not exist, so ids cannot be probed across tenants.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol

from aiohttp import BodyPartReader, web

from kubetune_gateway import mapping
from kubetune_gateway.auth import TokenTable, bearer_token, unknown_token
from kubetune_gateway.config import GatewayConfig, Tenant
from kubetune_gateway.errors import SERVER_ERROR, ApiError, invalid, not_found
from kubetune_gateway.ids import is_file_id, is_job_id, new_file_id, new_job_id
from kubetune_gateway.mapping import FileRecord
from kubetune_gateway.uploads import PURPOSE, check_purpose, check_rows

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHUNK = 1024 * 1024


class Jobs(Protocol):
    async def create(self, manifest: JSON) -> JSON: ...
    async def get(self, namespace: str, name: str) -> JSON | None: ...
    async def list_all(self, namespace: str) -> list[JSON]: ...
    async def cancel(self, namespace: str, name: str) -> JSON: ...
    async def events(self, namespace: str, name: str) -> list[JSON]: ...


class Files(Protocol):
    async def put(self, tenant: Tenant, record: FileRecord, path: Path) -> None: ...
    async def record(self, tenant: Tenant, file_id: str) -> FileRecord | None: ...
    async def file_ids(self, tenant: Tenant) -> list[str]: ...
    async def content(self, tenant: Tenant, file_id: str) -> bytes: ...
    async def delete(self, tenant: Tenant, file_id: str) -> None: ...


class Current(Protocol):
    """The latest good version of a mounted file (watched.WatchedFile)."""

    def current(self) -> Any: ...


JOBS, FILES, TOKENS, CONFIG, POOL, MAX_UPLOAD = (
    web.AppKey("jobs", Jobs),
    web.AppKey("files", Files),
    web.AppKey("tokens", Current),
    web.AppKey("config", Current),
    web.AppKey("pool", Executor),
    web.AppKey("max_upload", int),
)


# What the auth middleware found, for the handlers.
NAMESPACE, TENANT, SERVED = (
    web.RequestKey("namespace", str),
    web.RequestKey("tenant", Tenant),
    web.RequestKey("config", GatewayConfig),
)


def _json(body: JSON, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _error(exc: ApiError) -> web.Response:
    return _json(exc.body(), exc.status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in OpenAI's shape: ours, aiohttp's (unknown route, wrong method), and the unexpected."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"Unknown request URL: {request.method} {request.path}." if exc.status == 404 else exc.reason
        return _error(ApiError(exc.status, message, code="unknown_url" if exc.status == 404 else None))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(ApiError(500, "The server had an error while processing your request.", type_=SERVER_ERROR))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token -> namespace -> tenant, for everything under /v1."""
    if request.path.startswith("/v1/"):
        token = bearer_token(request.headers.get("Authorization"))
        table: TokenTable = request.app[TOKENS].current()
        namespace = table.namespace_for(token)
        if namespace is None:
            raise unknown_token()
        config: GatewayConfig = request.app[CONFIG].current()
        tenant = config.tenants.get(namespace)
        if tenant is None:
            raise ApiError(
                403,
                f"Namespace {namespace} has no tenant entry in the server's configuration; ask the administrator.",
                code="tenant_not_configured",
            )
        request[NAMESPACE], request[TENANT], request[SERVED] = namespace, tenant, config
    return await handler(request)


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


# -- files -----------------------------------------------------------------------------------------


async def _receive_upload(request: web.Request, scratch: Path) -> tuple[str | None, str | None, int]:
    """Stream the multipart body: `purpose` and `file` (to `scratch`, within the size limit)."""
    if not request.content_type.startswith("multipart/"):
        raise invalid("Expected a multipart/form-data body with fields 'purpose' and 'file'.", "file")
    limit = request.app[MAX_UPLOAD]
    purpose: str | None = None
    filename: str | None = None
    size = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = mapping.upload_filename(part.filename)
            with scratch.open("wb") as out:
                while chunk := await part.read_chunk(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        message = f"The file is larger than this server's limit of {limit} bytes."
                        raise ApiError(413, message, param="file")
                    out.write(chunk)
        else:
            raise invalid(f"Unrecognized request argument supplied: {part.name}", part.name, "unknown_parameter")
    return purpose, filename, size


async def create_file(request: web.Request) -> web.Response:
    tenant = request[TENANT]
    with tempfile.TemporaryDirectory(prefix="kubetune-api-") as tmp:
        scratch = Path(tmp) / "upload.jsonl"
        purpose, filename, size = await _receive_upload(request, scratch)
        check_purpose(purpose)
        if filename is None:
            raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
        loop = asyncio.get_running_loop()
        checked = await loop.run_in_executor(request.app[POOL], check_rows, scratch, filename)
        record = FileRecord(
            id=new_file_id(),
            bytes=size,
            created_at=int(time.time()),
            filename=filename,
            purpose=PURPOSE,
            rows=checked.rows,
            format=checked.format,
        )
        await request.app[FILES].put(tenant, record, scratch)
    log.info("stored %s (%s, %d rows) for %s", record.id, record.filename, checked.rows, request[NAMESPACE])
    return _json(mapping.file_object(record))


async def _file(request: web.Request) -> FileRecord:
    file_id = request.match_info["file_id"]
    record = await request.app[FILES].record(request[TENANT], file_id) if is_file_id(file_id) else None
    if record is None:
        raise not_found(f"No such File object: {file_id}", "file_id")
    return record


async def list_files(request: web.Request) -> web.Response:
    purpose = request.query.get("purpose")
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid(f"Invalid value for 'order': {order!r}; expected 'asc' or 'desc'", "order")
    limit = mapping.parse_limit(request.query.get("limit"), 10_000, 10_000)
    ids = await request.app[FILES].file_ids(request[TENANT])
    if purpose is not None and purpose != PURPOSE:
        ids = []  # only fine-tune files are ever stored here
    if order == "asc":
        ids.reverse()
    listed = mapping.page([{"id": file_id} for file_id in ids], request.query.get("after"), limit)
    records = await asyncio.gather(*(request.app[FILES].record(request[TENANT], i["id"]) for i in listed["data"]))
    listed["data"] = [mapping.file_object(r) for r in records if r is not None]  # None: deleted meanwhile
    return _json(listed)


async def get_file(request: web.Request) -> web.Response:
    return _json(mapping.file_object(await _file(request)))


async def file_content(request: web.Request) -> web.Response:
    record = await _file(request)
    body = await request.app[FILES].content(request[TENANT], record.id)
    return web.Response(body=body, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    record = await _file(request)
    await request.app[FILES].delete(request[TENANT], record.id)
    log.info("deleted %s for %s", record.id, request[NAMESPACE])
    return _json({"id": record.id, "object": "file", "deleted": True})


# -- fine-tuning jobs ------------------------------------------------------------------------------


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"We could not parse the JSON body of your request: {exc}", None, "invalid_json") from exc


async def create_job(request: web.Request) -> web.Response:
    namespace, tenant, config = request[NAMESPACE], request[TENANT], request[SERVED]
    body = await _body(request)
    job = mapping.parse_create_request(body)
    model_uri = config.catalog.get(job.model)
    if model_uri is None:
        known = ", ".join(sorted(config.catalog)) or "(none)"
        raise invalid(
            f"The model {job.model!r} does not exist or is not available for fine-tuning here; known models: {known}",
            "model",
            "model_not_found",
        )
    for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file_id is not None and await request.app[FILES].record(tenant, file_id) is None:
            raise invalid(f"Invalid file id for '{param}': no file {file_id} in this namespace.", param, "invalid_file")
    seed = job.seed if job.seed is not None else secrets.randbelow(mapping.SEED_MAX + 1)
    manifest = mapping.build_finetunejob(
        job, job_id=new_job_id(), namespace=namespace, tenant=tenant, model_uri=model_uri, seed=seed
    )
    created = await request.app[JOBS].create(manifest)
    log.info("created FineTuneJob %s/%s (model %s)", namespace, manifest["metadata"]["name"], job.model)
    return _json(mapping.job_object(created))


async def _job(request: web.Request) -> JSON:
    job_id = request.match_info["job_id"]
    found = await request.app[JOBS].get(request[NAMESPACE], job_id) if is_job_id(job_id) else None
    if found is None:
        raise not_found(f"No such fine-tuning job: {job_id}", "fine_tuning_job_id")
    return found


async def list_jobs(request: web.Request) -> web.Response:
    limit = mapping.parse_limit(request.query.get("limit"), 20, 100)
    jobs = mapping.newest_first(await request.app[JOBS].list_all(request[NAMESPACE]))
    return _json(mapping.page([mapping.job_object(j) for j in jobs], request.query.get("after"), limit))


async def get_job(request: web.Request) -> web.Response:
    return _json(mapping.job_object(await _job(request)))


async def cancel_job(request: web.Request) -> web.Response:
    found = await _job(request)
    if not mapping.is_cancellable(found):
        state = mapping.job_object(found)["status"]
        raise invalid(f"Job has already completed ({state}); it cannot be cancelled.", None, "job_not_cancellable")
    patched = await request.app[JOBS].cancel(request[NAMESPACE], found["metadata"]["name"])
    log.info("cancel requested for %s/%s", request[NAMESPACE], found["metadata"]["name"])
    return _json(mapping.job_object(patched))


async def list_events(request: web.Request) -> web.Response:
    found = await _job(request)
    limit = mapping.parse_limit(request.query.get("limit"), 20, 100)
    events = await request.app[JOBS].events(request[NAMESPACE], found["metadata"]["name"])
    return _json(mapping.page(mapping.job_events(found, events), request.query.get("after"), limit))


async def list_checkpoints(request: web.Request) -> web.Response:
    found = await _job(request)
    limit = mapping.parse_limit(request.query.get("limit"), 10, 100)
    return _json(mapping.page(mapping.checkpoint_objects(found), request.query.get("after"), limit))


def make_app(
    *, jobs: Jobs, files: Files, tokens: Current, config: Current, pool: Executor, max_upload_bytes: int
) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware])
    app[JOBS], app[FILES], app[TOKENS], app[CONFIG] = jobs, files, tokens, config
    app[POOL], app[MAX_UPLOAD] = pool, max_upload_bytes
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/fine_tuning/jobs", create_job)
    app.router.add_get("/v1/fine_tuning/jobs", list_jobs)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}", get_job)
    app.router.add_post("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}/events", list_events)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints)
    return app
