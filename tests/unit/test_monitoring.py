"""The Grafana dashboard and the alert rules shipped in docs/monitoring/ ask only for metrics a
worker exports, under the names it exports them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from streamtasks.keys import QueueKeys
from streamtasks.metrics import WorkerMetrics
from streamtasks.outcome import Delivery, Settle
from streamtasks.protocol import SETTLED, Action, SettleRecord
from streamtasks.session import Figures

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
_NAME = re.compile(r"\bstreamtasks_[a-z_]+")


def exported() -> set[str]:
    """The sample names a worker's /metrics holds once it has run a task."""
    metrics = WorkerMetrics()
    d = Delivery(QueueKeys("shop", "orders"), "1-0", {}, None, None, None, started=True)
    metrics.observe(Settle(d, SettleRecord("1-0", Action.ACK), "SUCCESS"), SETTLED)
    figures = dict.fromkeys(
        ["waiting", "in_flight", "delayed", "dead", "oldest_waiting_seconds"], 0.0
    )
    serving = Figures(0, 0.0, 0, 0, {"orders": figures})
    metrics.worker = SimpleNamespace(figures=lambda: serving)  # type: ignore[assignment]
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def test_the_dashboard_queries_only_exported_metrics() -> None:
    dashboard: dict[str, Any] = json.loads((DOCS / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in _NAME.findall(target["expr"])
    }
    assert queried and queried <= exported()


def test_the_alert_rules_query_only_exported_metrics() -> None:
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    queried = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in _NAME.findall(rule["expr"])
    }
    assert len(queried) >= 3 and queried <= exported()
