"""bench/operator_scale.py: how the operator copes with many FineTuneJobs at once.

Creates N FineTuneJobs (default 1,000) on the test Kubernetes API emulator (`tests/harness`) with the
real operator process (`python -m kubetune_operator.cli.kubetune_operator --all-namespaces`) watching it, and reports:

* the time from the first create call until every trainer Job `<name>-train-1` exists (goal: 60 s for
  1,000 jobs); with `--preflight`, every preflight Job `<name>-preflight` instead;
* p50 / p99 latency per FineTuneJob: from the return of the bench's create call to the first sight of
  its Job on a watch;
* API requests per FineTuneJob that the operator made (by User-Agent: the bench's own requests say
  `kubetune-bench`), broken down by verb and resource;
* the operator's peak RSS (VmHWM from /proc/<pid>/status; goal: 200 MB), its CPU time, and its own
  metrics (reconcile errors, reconcile p50 from the histogram, children created).

There is no kubelet and no Job controller: Jobs are only objects, nothing runs.

    python bench/operator_scale.py                 # 1,000 jobs
    python bench/operator_scale.py --jobs 50       # smoke test, about 7 s
    python bench/operator_scale.py --preflight --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "kubetune.io_finetunejobs.yaml"
GROUP, VERSION, PLURAL, NAMESPACE = "kubetune.io", "v1alpha1", "finetunejobs", "default"
BENCH_USER_AGENT = "kubetune-bench"
GOAL_ALL_JOBS_SECONDS = 60.0  # for 1,000 jobs on 2 cores
GOAL_RSS_MB = 200.0
CREATE_WORKERS = 8
SETTLE_QUIET_SECONDS = 2.0  # after the last Job: wait until the operator has been quiet this long ...
SETTLE_MAX_SECONDS = 20.0  # ... or at most this long
REQUEST_LOG_LIMIT = 1  # requests the emulator keeps for kmock's assertions (see start_apiserver)
_GO_TRUE = {"1", "t", "T", "true", "True", "TRUE"}


def harness(module: str) -> ModuleType:
    """`tests/harness/<module>.py`, imported at run time (tests/ is not a package on mypy's path)."""
    for path in (ROOT / "tests", ROOT / "api"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module(f"harness.{module}")


# ---------------------------------------------------------------------------------------------- request counting


def classify(method: str, path: str, query: dict[str, str]) -> tuple[str, str]:
    """(verb, resource) of a Kubernetes API request, e.g. ("patch", "finetunejobs/status")."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        rest = parts[3:]
    else:
        return method.lower(), "(other)"
    if not rest:
        return "get", "(discovery)"
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # /namespaces/<ns>/<plural>/...
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    resource = f"{plural}/{rest[2]}" if len(rest) > 2 else plural
    if method == "GET":
        verb = "watch" if query.get("watch") in _GO_TRUE else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method, method.lower())
    return verb, resource


def client_of(user_agent: str) -> str:
    if user_agent.startswith(BENCH_USER_AGENT):
        return "bench"
    if user_agent.startswith("kopf/"):
        return "kopf"
    if user_agent.startswith("OpenAPI-Generator/"):
        return "kubernetes-client"
    return user_agent or "(none)"


class RequestRecorder:
    """Counts every request the emulator receives, by window, client, verb and resource, with its serving time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.window = "startup"
        self.counts: Counter[tuple[str, str, str, str]] = Counter()  # (window, client, verb, resource)
        self.seconds: dict[tuple[str, str, str, str], float] = {}  # serving time, same keys (not for watches)
        self.last_operator_request = 0.0  # time.monotonic()

    def record(self, method: str, path: str, query: dict[str, str], user_agent: str) -> tuple[str, str, str, str]:
        """Counts a request as it arrives; returns the key for `served()`."""
        verb, resource = classify(method, path, query)
        who = client_of(user_agent)
        with self.lock:
            key = (self.window, who, verb, resource)
            self.counts[key] += 1
            if who != "bench":
                self.last_operator_request = time.monotonic()
        return key

    def served(self, key: tuple[str, str, str, str], seconds: float) -> None:
        if key[2] != "watch":  # a watch is served until it ends
            with self.lock:
                self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def set_window(self, window: str) -> None:
        with self.lock:
            self.window = window

    def operator_counts(self, windows: set[str]) -> dict[tuple[str, str, str], tuple[int, float]]:
        """(client, verb, resource) -> (requests, serving seconds), for the operator's clients in these windows."""
        out: dict[tuple[str, str, str], tuple[int, float]] = {}
        with self.lock:
            for key, n in self.counts.items():
                window, who, verb, resource = key
                if window in windows and who != "bench":
                    count, seconds = out.get((who, verb, resource), (0, 0.0))
                    out[(who, verb, resource)] = (count + n, seconds + self.seconds.get(key, 0.0))
        return out

    def total(self, windows: set[str]) -> int:
        return sum(n for n, _ in self.operator_counts(windows).values())

    def watching(self) -> set[str]:
        """Resources the operator has opened a watch on so far."""
        with self.lock:
            return {resource for (_, who, verb, resource) in self.counts if verb == "watch" and who != "bench"}


def start_apiserver(recorder: RequestRecorder) -> Any:
    """The harness emulator with the FineTuneJob CRD, counting requests in a bench-only subclass."""
    apiserver = harness("apiserver")
    base = apiserver.ApiServer

    async def counted_call(self: Any, raw_request: Any) -> Any:
        query, user_agent = dict(raw_request.query), raw_request.headers.get("User-Agent", "")
        key = recorder.record(raw_request.method, raw_request.path, query, user_agent)
        started = time.perf_counter()
        try:
            return await base.__call__(self, raw_request)
        finally:
            recorder.served(key, time.perf_counter() - started)

    counting = type("CountingApiServer", (base,), {"__call__": counted_call})
    # kmock matches every request against its whole request log (an identity scan per reaction), which makes the
    # emulator quadratic in the number of requests: with the harness default (5,000 kept) it, not the operator,
    # would saturate a core. The bench counts requests itself, so it keeps only a few.
    options = {"request_log_limit": REQUEST_LOG_LIMIT} if "request_log_limit" in attrs.fields_dict(base) else {}
    return apiserver.RunningApiServer(counting(**options), crd_paths=[CRD]).start()


# ---------------------------------------------------------------------------------------------- the operator


# ---------------------------------------------------------------------------------------------- the bench's side


def bench_client(server: Any) -> Any:
    api_client = server.api_client()
    api_client.user_agent = BENCH_USER_AGENT
    return api_client


class JobWatcher:
    """Watches batch/v1 Jobs in a thread and records when each Job name is first seen (time.monotonic())."""

    def __init__(self, server: Any) -> None:
        self.api_client = bench_client(server)
        self.batch = client.BatchV1Api(self.api_client)
        self.first_seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bench-job-watch", daemon=True)
        self.resource_version = ""

    def start(self) -> JobWatcher:
        listing = self.batch.list_namespaced_job(NAMESPACE, _preload_content=False)
        body = json.loads(listing.data)
        self.resource_version = body["metadata"]["resourceVersion"]
        now = time.monotonic()
        for item in body.get("items", []):
            self.first_seen.setdefault(item["metadata"]["name"], now)
        self.thread.start()
        return self

    def seen(self, names: list[str]) -> dict[str, float]:
        with self.lock:
            return {name: self.first_seen[name] for name in names if name in self.first_seen}

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._watch_once()
        except BaseException as exc:  # reported by the main loop
            self.error = exc

    def _watch_once(self) -> None:
        response = self.batch.list_namespaced_job(
            NAMESPACE,
            watch=True,
            resource_version=self.resource_version,
            timeout_seconds=2,  # the server ends the stream every 2 s, so stop() is quick
            allow_watch_bookmarks=False,
            _preload_content=False,
            _request_timeout=30,
        )
        buffer = b""
        try:
            for chunk in response.stream(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                now = time.monotonic()
                for line in lines:
                    if line.strip():
                        self._event(json.loads(line), now)
        finally:
            response.release_conn()

    def _event(self, event: dict[str, Any], now: float) -> None:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            if obj.get("code") == 410:  # history trimmed: relist (nothing is lost, Jobs are never deleted here)
                self.resource_version = ""
                return
            raise RuntimeError(f"watch error: {obj}")
        meta = obj.get("metadata") or {}
        self.resource_version = meta.get("resourceVersion") or self.resource_version
        with self.lock:
            self.first_seen.setdefault(meta["name"], now)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.api_client.close()


def finetunejob(name: str, preflight: bool) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"uri": "s3://models/llama/"},
            "dataset": {"train": "s3://data/train.jsonl"},
            "output": {"uri": f"s3://artifacts/{name}/"},
            "resources": {"gpus": 1},
            "preflight": {"enabled": preflight},
        },
    }


def create_all(server: Any, names: list[str], preflight: bool, returned: dict[str, float], errors: list[str]) -> None:
    """Creates the FineTuneJobs with a few threads (one ApiClient each); fills in create-return times and errors."""
    local = threading.local()
    clients: list[Any] = []
    clients_lock = threading.Lock()

    def create(name: str) -> float:
        api = getattr(local, "custom", None)
        if api is None:
            api_client = bench_client(server)
            with clients_lock:
                clients.append(api_client)
            api = local.custom = client.CustomObjectsApi(api_client)
        response = api.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, finetunejob(name, preflight), _preload_content=False
        )
        done = time.monotonic()
        response.read()  # drain it, or the pooled connection is not reusable
        response.release_conn()
        return done

    try:
        with ThreadPoolExecutor(max_workers=CREATE_WORKERS, thread_name_prefix="bench-create") as pool:
            futures = {pool.submit(create, name): name for name in names}
            for future in as_completed(futures):
                try:
                    returned[futures[future]] = future.result()
                except Exception as exc:  # reported; the run goes on with the others
                    errors.append(f"{futures[future]}: {exc}")
    finally:
        for api_client in clients:
            api_client.close()


# ---------------------------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def metric_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus does
            return lower + (upper - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = upper, cumulative
    return buckets[-1][0]


def operator_metrics(text: str) -> dict[str, Any]:
    buckets: list[tuple[float, float]] = []
    out: dict[str, Any] = {"reconcile_errors": 0.0, "reconciles": 0.0, "children_created": {}}
    for name, labels, value in metric_samples(text):
        if name == "kubetune_reconcile_errors_total":
            out["reconcile_errors"] = value
        elif name == "kubetune_reconcile_duration_seconds_bucket":
            buckets.append((float(labels["le"]), value))
        elif name == "kubetune_reconcile_duration_seconds_count":
            out["reconciles"] = value
        elif name == "kubetune_reconcile_duration_seconds_sum":
            out["reconcile_seconds_total"] = value
        elif name == "kubetune_children_created_total":
            out["children_created"][labels.get("kind", "?")] = value
    out["reconcile_p50_seconds"] = histogram_quantile(0.5, buckets)
    out["reconcile_p99_seconds"] = histogram_quantile(0.99, buckets)
    return out


@dataclass
class Results:
    jobs: int
    preflight: bool
    child: str
    cores: int
    completed: bool = False
    create_errors: list[str] = field(default_factory=list)
    create_seconds: float = math.nan  # first create call .. last create returned
    all_jobs_seconds: float = math.nan  # first create call .. last Job seen
    jobs_seen: int = 0
    latency_p50: float = math.nan
    latency_p99: float = math.nan
    latency_max: float = math.nan
    requests_until_last_job: int = 0
    requests_after_settle: int = 0
    settle_seconds: float = 0.0
    requests_startup: int = 0
    requests_by_verb: dict[str, int] = field(default_factory=dict)  # "client verb resource" -> n (after settle)
    server_ms_by_verb: dict[str, float] = field(default_factory=dict)  # mean time the emulator took to answer
    rss_peak_mb: float = math.nan
    rss_end_mb: float = math.nan
    operator_cpu_seconds: float = math.nan  # during the run (creation start .. settle end)
    bench_cpu_seconds: float = math.nan  # this process: the emulator, the creates and the watch
    metrics: dict[str, Any] = field(default_factory=dict)
    operator_log_errors: int = 0

    def per_job(self, n: float) -> float:
        return n / self.jobs if self.jobs else math.nan

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["requests_per_job_until_last_job"] = self.per_job(self.requests_until_last_job)
        data["requests_per_job"] = self.per_job(self.requests_after_settle)
        data["goals"] = {"all_jobs_seconds": GOAL_ALL_JOBS_SECONDS, "rss_peak_mb": GOAL_RSS_MB}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}


def fmt(value: float, unit: str = "", digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}{unit}"


def report(res: Results) -> str:
    goal_time = GOAL_ALL_JOBS_SECONDS * res.jobs / 1000  # the goal is 60 s per 1,000 jobs
    rows: list[tuple[str, str, str, str]] = [
        (
            f"time until all {res.jobs:,} {res.child} Jobs exist",
            fmt(res.all_jobs_seconds, " s"),
            fmt(goal_time, " s", 1) + ("" if res.jobs == 1000 else " (60 s x N/1000)"),
            fmt(res.all_jobs_seconds / goal_time, "x"),
        ),
        ("create -> Job latency p50", fmt(res.latency_p50, " s"), "-", "-"),
        ("create -> Job latency p99", fmt(res.latency_p99, " s"), "-", "-"),
        ("create -> Job latency max", fmt(res.latency_max, " s"), "-", "-"),
        ("operator peak RSS (VmHWM)", fmt(res.rss_peak_mb, " MB", 1), fmt(GOAL_RSS_MB, " MB", 0),
         fmt(res.rss_peak_mb / GOAL_RSS_MB, "x")),
        ("operator API requests per job", fmt(res.per_job(res.requests_after_settle)), "-", "-"),
        ("  ... until the last Job existed", fmt(res.per_job(res.requests_until_last_job)), "-", "-"),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [("figure", "value", "goal", "ratio"), *rows]) for i in range(4)]
    lines = [
        f"operator_scale: {res.jobs:,} FineTuneJobs, preflight {'on' if res.preflight else 'off'}, "
        f"{res.cores} cores, kubelet off (Jobs are never run)",
        "",
        "  ".join(h.ljust(w) for h, w in zip(("figure", "value", "goal", "ratio figure/goal"), widths, strict=True)),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    m = res.metrics
    children = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(m.get("children_created", {}).items())) or "none"
    lines += [
        "",
        f"completed: {'yes' if res.completed else 'NO'} ({res.jobs_seen:,}/{res.jobs:,} Jobs seen); "
        f"create errors: {len(res.create_errors)}; FineTuneJobs created in {fmt(res.create_seconds, ' s')} "
        f"({fmt(res.jobs / res.create_seconds if res.create_seconds else math.nan, '/s', 0)})",
        f"operator CPU during the run: {fmt(res.operator_cpu_seconds, ' s', 1)}; bench process (emulator + "
        f"creates + watch): {fmt(res.bench_cpu_seconds, ' s', 1)}; final RSS {fmt(res.rss_end_mb, ' MB', 1)}",
        f"operator metrics: {m.get('reconciles', 0):,.0f} reconciles, p50 "
        f"{fmt(m.get('reconcile_p50_seconds', math.nan) * 1000, ' ms', 1)}, p99 "
        f"{fmt(m.get('reconcile_p99_seconds', math.nan) * 1000, ' ms', 1)} (histogram); reconcile errors "
        f"{m.get('reconcile_errors', 0):,.0f}; children created: {children}; ERROR lines in its log: "
        f"{res.operator_log_errors}",
        f"operator requests: {res.requests_startup:,} at startup (not counted), {res.requests_until_last_job:,} "
        f"until the last Job, {res.requests_after_settle:,} after {res.settle_seconds:.1f} s settling "
        f"(until {SETTLE_QUIET_SECONDS:.0f} s without a request, at most {SETTLE_MAX_SECONDS:.0f} s):",
    ]
    lines.append(f"    {'client verb resource':<55} {'requests':>8}  {'per job':>8}  emulator ms/request (mean)")
    for key, n in sorted(res.requests_by_verb.items(), key=lambda kv: (-kv[1], kv[0])):
        ms = res.server_ms_by_verb.get(key)
        lines.append(f"    {key:<55} {n:>8,}  {res.per_job(n):8.2f}  {'-' if ms is None else f'{ms:.1f}'}")
    for error in res.create_errors[:5]:
        lines.append(f"create error: {error}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> Results:
    cores = len(os.sched_getaffinity(0))
    suffix = "preflight" if args.preflight else "train-1"
    res = Results(
        jobs=args.jobs, preflight=args.preflight, child="preflight" if args.preflight else "trainer", cores=cores
    )
    names = [f"scale-{i:04d}" for i in range(1, args.jobs + 1)]
    child_names = {name: f"{name}-{suffix}" for name in names}

    recorder = RequestRecorder()
    tmp = Path(tempfile.mkdtemp(prefix="kubetune-operator-scale-"))
    log_path = Path(args.operator_log) if args.operator_log else tmp / "operator.log"
    server = start_apiserver(recorder)
    operator: Any = None  # harness.operator_process.OperatorProcess
    watcher: JobWatcher | None = None
    try:
        operator_process = harness("operator_process").OperatorProcess
        operator = operator_process(server.write_kubeconfig(tmp / "kubeconfig"), log_path).start()
        print(f"emulator at {server.url}; operator pid {operator.pid} ready; log {log_path}", file=sys.stderr)
        # /readyz answers before kopf has listed and watched: wait for its watches so startup is not timed.
        wanted, deadline = {"finetunejobs", "jobs", "pods"}, time.monotonic() + 30
        while not wanted <= recorder.watching() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        watcher = JobWatcher(server).start()
        cpu0, bench_cpu0 = operator.cpu_seconds(), time.process_time()
        recorder.set_window("run")

        returned: dict[str, float] = {}  # name -> when its create call returned
        errors: list[str] = []
        creator = threading.Thread(
            target=create_all, args=(server, names, args.preflight, returned, errors), name="bench-creates", daemon=True
        )
        t0 = time.monotonic()
        creator.start()

        deadline = t0 + args.timeout
        next_progress = t0 + 5
        last_seen = t0
        while time.monotonic() < deadline:
            operator.check_alive()
            if watcher.error is not None:
                raise RuntimeError("the bench's Job watch failed") from watcher.error
            seen = watcher.seen(list(child_names.values()))
            if len(seen) == len(names):
                last_seen = max(seen.values())
                res.completed = True
                break
            now = time.monotonic()
            if now >= next_progress:
                print(
                    f"  {now - t0:6.1f} s: {len(returned):,} created, {len(seen):,}/{len(names):,} "
                    f"{suffix} Jobs, operator RSS {operator.proc_status('VmRSS') / 1e6:.0f} MB",
                    file=sys.stderr,
                )
                next_progress += 5
            time.sleep(0.1)
        recorder.set_window("settle")
        until_last_job = recorder.total({"run"})

        # Settle: the operator goes on writing status after it created a Job; count that too.
        settle_start = time.monotonic()
        while time.monotonic() - settle_start < SETTLE_MAX_SECONDS:
            if time.monotonic() - recorder.last_operator_request >= SETTLE_QUIET_SECONDS:
                break
            time.sleep(0.1)
        res.settle_seconds = time.monotonic() - settle_start

        creator.join(timeout=max(1.0, deadline - time.monotonic()))
        res.create_errors = errors if not creator.is_alive() else [*errors, "the creates did not finish"]
        if returned:
            res.create_seconds = max(returned.values()) - t0
        seen = watcher.seen(list(child_names.values()))
        res.jobs_seen = len(seen)
        if res.completed:
            res.all_jobs_seconds = last_seen - t0
        latencies = [seen[child_names[n]] - returned[n] for n in names if n in returned and child_names[n] in seen]
        res.latency_p50, res.latency_p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        res.latency_max = max(latencies, default=math.nan)

        res.requests_startup = recorder.total({"startup"})
        res.requests_until_last_job = until_last_job
        counts = recorder.operator_counts({"run", "settle"})
        res.requests_after_settle = sum(n for n, _ in counts.values())
        res.requests_by_verb = {f"{who} {verb} {resource}": n for (who, verb, resource), (n, _) in counts.items()}
        res.server_ms_by_verb = {
            f"{who} {verb} {resource}": 1000 * seconds / n
            for (who, verb, resource), (n, seconds) in counts.items()
            if verb != "watch"
        }
        res.rss_peak_mb = operator.proc_status("VmHWM") / 1e6
        res.rss_end_mb = operator.proc_status("VmRSS") / 1e6
        res.operator_cpu_seconds = operator.cpu_seconds() - cpu0
        res.bench_cpu_seconds = time.process_time() - bench_cpu0
        res.metrics = operator_metrics(operator.get("/metrics") or "")
        return res
    finally:
        if watcher is not None:
            watcher.stop()
        if operator is not None:
            operator.stop()
            res.operator_log_errors = sum(
                " ERROR " in line or "Traceback" in line for line in operator.log().splitlines()
            )
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="FineTuneJobs to create (default 1000)")
    parser.add_argument(
        "--preflight", action="store_true", help="jobs keep the preflight on; time until every preflight Job exists"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    parser.add_argument("--operator-log", help="keep the operator's log in this file (default: a temp file, removed)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    res = run(args)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res.to_json(), indent=2, sort_keys=True) + "\n")
    return 0 if res.completed and not res.create_errors else 1


if __name__ == "__main__":
    sys.exit(main())
