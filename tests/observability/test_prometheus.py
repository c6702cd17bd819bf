"""A real Prometheus (Debian's `prometheus` binary) scrapes the real operator and a real trainer
pod, evaluates the shipped alert rules, and answers every dashboard query and alert expression.

Wiring: the emulated API, the test kubelet (each pod a local process with its own IP
127.0.0.N), SeaweedFS S3, the operator process, and Prometheus on 127.0.0.1 with
- job `kubetune-operator`: a static target, the operator's /metrics (`OperatorProcess.port`);
- job `kubetune-trainer`: `file_sd`, filled with `<status.podIP>:<KUBETUNE_METRICS_PORT>` as soon
  as the trainer pod runs (what a PodMonitor does on a cluster), scraped every 200 ms because a
  few series (the final eval loss) exist only in the trainer's last second.
Three FineTuneJobs give every series data: one trains, is SIGKILLed after its first checkpoint,
is retried (reason Killed) and succeeds; one fails (InvalidSpec); one waits in Queued
(queueName, preflight off).

Dashboard targets run as Grafana runs them: a range query over the test's time span (step 1 s),
or an instant query for targets marked `instant`. Each must return at least one series.
Alert expressions are conditions (`> 0`, `== 0`) that a healthy run does not meet, so the test
queries what each condition compares (the expression without its final comparison, `absent(x)`
as `x`) over the run and requires series there; the whole expression must evaluate without
error, every rule group must be healthy, and KubetuneJobFailed, which this run really triggers,
must be firing for reason InvalidSpec.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from kubernetes import client

from conftest import FAKE_CREDENTIALS, ROOT, upload_tiny_job
from harness import Cluster
from harness.finetunejob import finetunejob as shared_finetunejob
from harness.operator_process import OperatorProcess, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.s3]

RULES = ROOT / "charts/kubetune/files/prometheus-rules.yaml"
DASHBOARD = ROOT / "charts/kubetune/files/dashboards/kubetune-overview.json"
PROMETHEUS = shutil.which("prometheus")
GROUP, VERSION, PLURAL, NAMESPACE = "kubetune.io", "v1alpha1", "finetunejobs", "default"
TRAINED = "observed"


def finetunejob(name: str, bucket: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    """The shared test job, 40 steps, straight to the trainer (no preflight)."""
    return shared_finetunejob(
        name, bucket, endpoint, training={"maxSteps": 40}, **{"preflight": {"enabled": False}, **spec}
    )


class Prometheus:
    def __init__(self, workdir: Path, operator_port: int) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = workdir / "trainers.json"
        self.targets.write_text("[]")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "kubetune-operator", "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
                {
                    "job_name": "kubetune-trainer",
                    "scrape_interval": "200ms",
                    "scrape_timeout": "200ms",
                    "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
                },
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.ready, 30, "Prometheus to be ready", self.check_alive)

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")

    def scrape_trainers(self, *addresses: str) -> None:
        self.targets.write_text(json.dumps([{"targets": list(addresses)}]))

    def api(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def series(self, expr: str, start: float, end: float, instant: bool = False) -> list[dict[str, Any]]:
        if instant:
            return list(self.api("query", query=expr, time=end)["result"])
        return list(self.api("query_range", query=expr, start=start, end=end, step="1s")["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def grafana(expr: str) -> str:
    """Substitute the dashboard's variables as Grafana would for the trained job."""
    return (
        expr.replace("$namespace", NAMESPACE)
        .replace("$job", TRAINED)
        .replace("$__rate_interval", "10s")
        .replace("${datasource}", "prometheus")
    )


COMPARISON = re.compile(r"\s(?:>|<|==|!=|>=|<=)\s")
SET_OPERATOR = re.compile(r"\n\s*(?:and|or|unless)\s*\n")


def compared_series(expr: str) -> list[str]:
    """What an alert condition compares: each operand of a top-level `and`/`or`/`unless`, split at
    its comparison, constants dropped, `absent(x)` as `x`."""
    operands = []
    for part in SET_OPERATOR.split(expr.strip()):
        for side in COMPARISON.split(part.strip()):
            side = side.strip()
            if re.fullmatch(r"[\d.e+-]+", side):
                continue
            if side.startswith("absent(") and side.endswith(")"):
                side = side[len("absent(") : -1]
            operands.append(side)
    return operands


@pytest.fixture
def staged(s3_endpoint: str, tiny_model_dir: Path, kube_api: Any) -> dict[str, str]:
    creds = {k.lower(): v for k, v in FAKE_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **creds)
    bucket = "kubetune-observability"
    s3.create_bucket(Bucket=bucket)
    upload_tiny_job(s3, tiny_model_dir, bucket)
    return {"bucket": bucket, "endpoint": s3_endpoint}


@pytest.fixture
def cluster(kube_api: Any, tmp_path: Path) -> Iterator[Cluster]:
    checkout = os.pathsep.join(str(ROOT / d) for d in ("api", "trainer"))  # this checkout's trainer in the pods
    env = {"HF_HUB_OFFLINE": "1", "AWS_DEFAULT_REGION": "us-east-1", "OMP_NUM_THREADS": "1", "PYTHONPATH": checkout}
    with Cluster(kube_api, work_root=tmp_path / "nodes", extra_env=env) as running:
        yield running


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package; .ci/system-deps)")
def test_prometheus_answers_every_dashboard_query_and_alert_expression(
    kube_api: Any, cluster: Cluster, staged: dict[str, str], tmp_path: Path
) -> None:
    api_client = kube_api.api_client()
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    core.create_namespaced_secret(
        NAMESPACE,
        {"metadata": {"name": "s3-creds"}, "stringData": {key: FAKE_CREDENTIALS[key] for key in keys}},
    )
    trainer_port = free_port()
    operator = OperatorProcess(
        kube_api.kubeconfig,
        tmp_path / "operator.log",
        KUBETUNE_POLL_INTERVAL_SECONDS="0.5",
        KUBETUNE_METRICS_PORT=str(trainer_port),
        # The final eval loss exists only after the last step: trainers keep serving it a moment.
        KUBETUNE_TRAINER_METRICS_LINGER_SECONDS="3",
    )
    prometheus: Prometheus | None = None
    try:
        operator.start()
        prometheus = Prometheus(tmp_path, operator.port)
        start = time.time()

        def apply(body: dict[str, Any]) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

        def phase(name: str) -> str | None:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
            return (obj.get("status") or {}).get("phase")

        bucket, endpoint = staged["bucket"], staged["endpoint"]
        broken = finetunejob("broken", bucket, endpoint)
        broken["spec"]["dataset"]["train"] = "data/train.jsonl"  # schema-valid, the operator's InvalidSpec
        apply(broken)
        apply(finetunejob("waiting", bucket, endpoint, queueName="gpu-queue"))
        # An impossible evaluation gate: the job succeeds, its adapter fails the gate (KubetuneEvaluationGateFailed).
        impossible = {"gate": {"metric": "evalLoss", "threshold": 0.001}}
        apply(finetunejob(TRAINED, bucket, endpoint, backoffLimit=2, evaluation=impossible))

        def trainer_pod(attempt: int) -> dict[str, Any] | None:
            selector = (
                f"kubetune.io/finetunejob={TRAINED},app.kubernetes.io/component=trainer,kubetune.io/attempt={attempt}"
            )
            pods = [p for p in cluster.pods(selector) if p.get("status", {}).get("podIP")]
            return pods[0] if pods else None

        def checkpointed() -> bool:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, TRAINED)
            return bool((obj.get("status") or {}).get("checkpoints"))

        first = wait_for(lambda: trainer_pod(1), 60, "the trainer pod's IP", operator.check_alive)
        addresses = [f"{first['status']['podIP']}:{trainer_port}"]
        prometheus.scrape_trainers(*addresses)
        wait_for(checkpointed, 120, "the first checkpoint", operator.check_alive)
        cluster.kill(first["metadata"]["name"], signal.SIGKILL)  # retried as attempt 2 (reason Killed)
        second = wait_for(lambda: trainer_pod(2), 60, "the retry's pod IP", operator.check_alive)
        prometheus.scrape_trainers(*addresses, f"{second['status']['podIP']}:{trainer_port}")
        wait_for(
            lambda: phase(TRAINED) in {"Succeeded", "Failed"} or None, 120, "training to end", operator.check_alive
        )
        assert phase(TRAINED) == "Succeeded", operator.log()[-3000:]
        assert phase("broken") == "Failed" and phase("waiting") == "Queued"
        time.sleep(3)  # a few more operator scrapes and rule evaluations after the end
        end = time.time()

        # -- every dashboard query -------------------------------------------------------------
        dashboard = json.loads(DASHBOARD.read_text())
        empty = []
        for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
            for target in panel["targets"]:
                expr = grafana(target["expr"])
                if not prometheus.series(expr, start, end, instant=bool(target.get("instant"))):
                    empty.append(f"{panel['title']}: {expr}")
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.*), (\w+)\)", grafana(variable["query"]["query"]))
                assert match, variable
                values = prometheus.api("label/" + match[2] + "/values", **{"match[]": match[1], "start": start})
                assert values, f"variable {variable['name']} has no values"
        assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)

        # -- every alert expression --------------------------------------------------------------
        rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
        for rule in rules:
            prometheus.series(rule["expr"], start, end)  # evaluates without error
            for operand in compared_series(rule["expr"]):
                assert prometheus.series(operand, start, end), f"{rule['alert']}: no data for {operand}"
        groups = prometheus.api("rules")["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} == {r["alert"] for r in rules}
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
        firing = prometheus.series('ALERTS{alertname="KubetuneJobFailed", alertstate="firing"}', start, end)
        assert {s["metric"]["reason"] for s in firing} == {"InvalidSpec"}
        gate = prometheus.series('ALERTS{alertname="KubetuneEvaluationGateFailed", alertstate="firing"}', start, end)
        assert {s["metric"]["metric"] for s in gate} == {"evalLoss"}
        queued = prometheus.series("max(kubetune_oldest_queued_job_age_seconds)", start, end, instant=True)
        assert float(queued[0]["value"][1]) > 0
    finally:
        if prometheus is not None:
            prometheus.stop()
        operator.stop()
