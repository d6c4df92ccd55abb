# SPDX-License-Identifier: Apache-2.0
"""Every panel of the Grafana dashboard shows data: mixed traffic through the official ``openai``
client to a real server, scraped by a real Prometheus, then each panel query (template variables
substituted as Grafana does) evaluated through Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from helpers.server import (
    MODEL,
    N_VISUAL,
    free_port,
    image_messages,
    scrape,
    streamed_chat_chunks,
    total,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "mipruner.json"
)
PROMETHEUS = shutil.which("prometheus")
SCRAPE_INTERVAL_S = 1
#: Grafana's range variables, as on a dashboard showing the last 10 minutes.
GRAFANA_RANGE = {"$__range": "10m", "$__rate_interval": "1m", "$__interval": "15s"}


class PrometheusAPI:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str, **params) -> dict:
        reply = httpx.get(self.base_url + path, params=params, timeout=10).json()
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str, at: float) -> list[dict]:
        return self.get("/api/v1/query", query=expr, time=f"{at:.3f}")["result"]


@pytest.fixture()
def prometheus(server, tmp_path_factory):
    """A real Prometheus scraping the shared server every second."""
    if PROMETHEUS is None:
        pytest.skip(
            "no prometheus binary (Debian: apt-get install prometheus; .ci/run installs it)"
        )
    tmp = tmp_path_factory.mktemp("prometheus-dashboard")
    target = server.base_url.removeprefix("http://")
    (tmp / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
        "scrape_configs:\n  - job_name: mipruner-vllm\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if any(r["value"][1] == "1" for r in api.query("up", time.time())):
                    break
            except (httpx.HTTPError, AssertionError, ValueError):
                pass
            assert time.monotonic() < deadline, (
                f"Prometheus never scraped {target}:\n{log.read_text()[-2000:]}"
            )
            time.sleep(1)
        yield api
    finally:
        process.terminate()
        process.wait(timeout=30)


def _chat(client, messages, **extra_body):
    response = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=2,
        temperature=0.0,
        extra_body=extra_body or None,
    )
    return response.usage


def send_mixed_traffic(client, wave: int) -> None:
    """Several methods and budgets, unpruned requests, a stream and follow-ups on one image.

    Every wave uses images of its own: a request repeated exactly is served from vLLM's caches
    and runs no selection, so the worker-side series would not move in the second wave.
    """
    seed = 1000 + 100 * wave
    budgets = (
        {"keep_ratio": 0.25},
        {"keep_ratio": 0.5, "mi_lambda": 0.5},
        {"keep_tokens": 3},
        {"keep_ratio": 0.25, "pruning_method": "trimtokenator"},
        {"keep_ratio": 0.5, "pruning_method": "similarity"},
        {"keep_ratio": 0.25, "pruning_method": "random"},
        {"keep_ratio": 0.25, "pruning_method": "divprune"},
    )
    for i, extra in enumerate(budgets):
        usage = _chat(client, image_messages(seed=seed + i), **extra)
        assert usage.visual_tokens == N_VISUAL and usage.visual_tokens_kept < N_VISUAL, extra
    for i, unpruned in enumerate(({"keep_ratio": 1.0}, {"pruning_method": "none"})):
        usage = _chat(client, image_messages(seed=seed + 10 + i), **unpruned)
        assert usage.visual_tokens_kept == N_VISUAL, unpruned
    chunks = streamed_chat_chunks(client, image_messages(seed=seed + 20), keep_ratio=0.25)
    assert chunks[-1].usage is not None and chunks[-1].usage.visual_tokens_kept == 4
    # Follow-up questions on one image: the unpruned encoder output comes from the store.
    first = image_messages("What is in this picture?", seed=seed + 30)
    _chat(client, first, keep_ratio=0.25)
    usage = _chat(
        client, image_messages("Which colour is on the left?", seed=seed + 30), keep_ratio=0.25
    )
    assert usage.visual_tokens == N_VISUAL and usage.visual_tokens_kept == 4
    follow_up = [
        *first,
        {"role": "assistant", "content": "A pattern."},
        {"role": "user", "content": "Which colour is on the left?"},
    ]
    usage = _chat(client, follow_up, keep_ratio=0.25)
    assert usage.visual_tokens == N_VISUAL and usage.visual_tokens_kept == 4


def _wait_until_scraped(prometheus: PrometheusAPI, expr: str, want: float) -> None:
    """Wait for Prometheus to hold a sample of ``expr`` >= ``want`` (the last wave is scraped)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = prometheus.query(expr, time.time())
        if result and float(result[0]["value"][1]) >= want:
            return
        time.sleep(SCRAPE_INTERVAL_S)
    pytest.fail(f"Prometheus never saw {expr} >= {want}")


def _defined_metrics() -> set[str]:
    from prometheus_client import REGISTRY

    import mipruner_vllm.metrics  # noqa: F401 - registers the metrics

    names = set()
    for metric in REGISTRY.collect():
        names |= {metric.name + suffix for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    return names


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (f"{p['title']} [{t['refId']}]", t["expr"])
        for p in dashboard["panels"]
        for t in p["targets"]
    ]


def test_every_dashboard_panel_shows_data(server, client, prometheus):
    dashboard = json.loads(DASHBOARD.read_text())
    saved = f'sum(mipruner_visual_tokens_saved_total{{model="{MODEL}"}})'
    # Two waves, each scraped: a counter's first sample carries no rate, its next increase does.
    for wave in range(2):
        send_mixed_traffic(client, wave)
        expected = total(scrape(server.base_url), "mipruner_visual_tokens_saved_total", model=MODEL)
        _wait_until_scraped(prometheus, saved, expected)
        time.sleep(3 * SCRAPE_INTERVAL_S)
    at = time.time()

    # Template variables: `model` from its own label_values() query, as Grafana fills it in.
    values = {}
    for variable in dashboard["templating"]["list"]:
        metric, label = re.fullmatch(
            r"label_values\((\w+), (\w+)\)", variable["definition"]
        ).groups()
        found = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
        assert MODEL in found, f"variable {variable['name']}: {found}"
        values["$" + variable["name"]] = MODEL

    defined = _defined_metrics()
    empty = []
    for name, expr in _panel_queries():
        for var, value in {**values, **GRAFANA_RANGE}.items():
            expr = expr.replace(var, value)
        missing = set(re.findall(r"\bmipruner_[a-z_]+", expr)) - defined
        assert not missing, f"{name} queries undefined series {sorted(missing)}"
        result = prometheus.query(expr, at)
        finite = [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]
        if not finite:
            empty.append(f"{name}: {expr} -> {result}")
    assert not empty, "dashboard panels without data:\n" + "\n".join(empty)
