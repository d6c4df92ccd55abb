# SPDX-License-Identifier: Apache-2.0
"""The Grafana dashboard only queries metrics that exist (ours in metrics.py, vLLM's in vLLM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mipruner.json"


def _exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def test_dashboard_uses_only_defined_mipruner_metrics():
    from prometheus_client import REGISTRY

    import mipruner_vllm.metrics  # noqa: F401 - registers the metrics

    exposed = {s.name for metric in REGISTRY.collect() for s in metric.samples}
    exposed |= {metric.name + suffix for metric in REGISTRY.collect() for suffix in ("", "_total", "_bucket")}
    used = {m for e in _exprs() for m in re.findall(r"\bmipruner_[a-z_]+", e)}
    assert used, "the dashboard should chart mipruner_ series"
    assert used <= exposed, f"dashboard queries undefined metrics: {sorted(used - exposed)}"


def test_dashboard_uses_only_real_vllm_metrics():
    loggers = Path(__import__("vllm").__file__).parent / "v1" / "metrics" / "loggers.py"
    defined = set(re.findall(r'"(vllm:[a-z_]+)"', loggers.read_text()))
    used = {re.sub(r"_(bucket|total|sum|count)$", "", m) for e in _exprs() for m in re.findall(r"vllm:[a-z_]+", e)}
    assert used <= defined, f"dashboard queries unknown vLLM metrics: {sorted(used - defined)}"


def test_prometheus_scrapes_the_server_port_the_dockerfile_exposes():
    assert 'targets: ["mipruner-vllm:8000"]' in (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "EXPOSE 8000" in (ROOT / "Dockerfile").read_text()
