"""The Grafana dashboard: schema-checked with grafana-foundation-sdk, plus the structure a
provisioned dashboard needs to work (datasource variable, template variables, queries).

grafana-foundation-sdk has no validator: its generated types (`Dashboard.from_json`) decode
the JSON, panel options and Prometheus queries by plugin type and silently drop what the
schema does not know. So the check is a round trip: decode, encode with the SDK's encoder,
and require every key and value of the file to come back unchanged (a misspelt or unknown
field, or a panel option of the wrong panel type, is lost on the way and fails the test).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/kubetune/files/dashboards/kubetune-overview.json"
VARIABLES = {"datasource", "namespace", "job"}


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def lost_in_round_trip(original: Any, decoded: Any, path: str = "$") -> list[str]:
    """Paths of `original` that are missing or different in `decoded` (extra defaults are fine)."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            return [f"{path}: {original!r} became {decoded!r}"]
        lost = [f"{path}.{key}" for key in original if key not in decoded]
        for key in original.keys() & decoded.keys():
            lost += lost_in_round_trip(original[key], decoded[key], f"{path}.{key}")
        return lost
    if isinstance(original, list):
        if not isinstance(decoded, list) or len(original) != len(decoded):
            return [f"{path}: list changed"]
        pairs = enumerate(zip(original, decoded, strict=True))
        return [m for i, (a, b) in pairs for m in lost_in_round_trip(a, b, f"{path}[{i}]")]
    return [] if original == decoded else [f"{path}: {original!r} became {decoded!r}"]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_round_trips_through_grafana_foundation_sdk() -> None:
    sdk = pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk (dev extra)")
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import prometheus
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

    assert sdk is not None
    plugins.register_default_plugins()
    raw = load()
    dashboard = Dashboard.from_json(raw)
    for panel in dashboard.panels or []:
        assert isinstance(panel, (Panel, RowPanel))
        if isinstance(panel, Panel):
            # decoded as Prometheus queries, not the SDK's "unknown query" bag
            assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets or []), panel.title
            assert not isinstance(panel.options, dict), f"{panel.title}: options of unknown panel type {panel.type_val}"
    encoded = json.loads(json.dumps(dashboard, cls=JSONEncoder))
    assert lost_in_round_trip(raw, encoded) == []


def test_panels_are_complete_and_laid_out() -> None:
    dashboard = load()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        cells = {(pos["y"] + dy, pos["x"] + dx) for dy in range(pos["h"]) for dx in range(pos["w"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
    for panel in panels(dashboard):
        assert panel["title"] and panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], panel["title"]


def test_template_variables_exist_and_are_used() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == VARIABLES
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name, label in (("namespace", "finetunejob_namespace"), ("job", "finetunejob")):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == "${datasource}"
        assert re.fullmatch(rf"label_values\(kubetune_trainer_step(\{{.*\}})?, {label}\)", var["query"]["query"])
        assert var["includeAll"] and var["allValue"] == ".*"  # "All" must be a regex for =~
    exprs = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    used = set(re.findall(r"\$(\w+)", " ".join(exprs))) - {"__rate_interval"}
    assert used == {"namespace", "job"}
    for expr in exprs:
        if "kubetune_trainer_" in expr:  # every trainer query honours both filters
            assert 'finetunejob_namespace=~"$namespace"' in expr and 'finetunejob=~"$job"' in expr, expr


def test_dashboard_covers_what_operations_md_promises() -> None:
    exprs = " ".join(t["expr"] for p in panels(load()) for t in p["targets"])
    for metric in (
        "kubetune_finetunejobs",
        "kubetune_finetunejob_failures_total",
        "kubetune_oldest_queued_job_age_seconds",
        "kubetune_trainer_progress_ratio",
        "kubetune_trainer_train_loss",
        "kubetune_trainer_eval_loss",
        "kubetune_trainer_baseline_eval_loss",
        "kubetune_trainer_tokens_per_second",
        "kubetune_trainer_eta_seconds",
        "kubetune_trainer_gpu_memory_bytes",
        "kubetune_trainer_checkpoints_total",
        "kubetune_reconcile_duration_seconds_bucket",
        "kubetune_reconcile_errors_total",
    ):
        assert metric in exprs, metric
    assert "histogram_quantile(" in exprs
