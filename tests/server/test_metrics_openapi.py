# SPDX-License-Identifier: Apache-2.0
"""``/metrics`` moves by exactly what the requests imply; ``/openapi.json`` documents the fields;
a real Prometheus (when installed) scrapes the mipruner_ series."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
from helpers.server import (
    MODEL,
    N_VISUAL,
    chat_body,
    free_port,
    image_data_url,
    sample,
    scrape,
    total,
)

from mipruner_vllm.config import KEEP_TOKENS_MAX, SEED_MAX
from mipruner_vllm.params import REQUEST_FIELDS, n_keep

pytestmark = pytest.mark.server

IMAGE = {"model": MODEL, "modality": "image"}


def test_metrics_move_by_exactly_the_requests(server, http):
    budgets = [
        {"keep_ratio": 0.5},
        {"keep_ratio": 0.25},
        {"keep_tokens": 3},
        {"keep_ratio": 1.0},
        {"keep_ratio": 0.5},
    ]
    before = scrape(server.base_url)
    for budget in budgets:
        assert http.post("/v1/chat/completions", json=chat_body(**budget)).status_code == 200
    # Refused and text-only requests count nothing.
    assert http.post("/v1/chat/completions", json=chat_body(keep_ratio=3)).status_code == 400
    text_only = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "keep_ratio": 0.5,
    }
    assert http.post("/v1/chat/completions", json=text_only).status_code == 200
    after = scrape(server.base_url)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    kept = [n_keep(N_VISUAL, **b) for b in budgets]
    pruned = [k for k in kept if k < N_VISUAL]
    # Items that were pruned are labelled with the method that pruned them ("mi"); an item kept
    # whole is labelled "none" whatever was asked.
    assert delta("mipruner_visual_tokens_total", method="mi", **IMAGE) == N_VISUAL * len(pruned)
    assert delta("mipruner_visual_tokens_total", method="none", **IMAGE) == N_VISUAL * (
        len(kept) - len(pruned)
    )
    assert delta("mipruner_visual_tokens_kept_total", method="mi", **IMAGE) == sum(pruned)
    assert delta("mipruner_visual_tokens_saved_total", method="mi", **IMAGE) == N_VISUAL * len(
        pruned
    ) - sum(pruned)
    assert delta("mipruner_visual_tokens_saved_total", method="none", **IMAGE) == 0
    assert delta("mipruner_pruned_requests_total", model=MODEL, method="mi") == len(pruned)
    assert delta("mipruner_keep_ratio_count", method="mi", **IMAGE) == len(pruned)
    assert delta("mipruner_keep_ratio_sum", method="mi", **IMAGE) == pytest.approx(
        sum(k / N_VISUAL for k in pruned)
    )
    assert delta("mipruner_keep_ratio_bucket", method="mi", le="0.25", **IMAGE) == sum(
        k / N_VISUAL <= 0.25 for k in pruned
    )
    # Totals over every label agree with the per-label view.
    assert total(after, "mipruner_visual_tokens_total") - total(
        before, "mipruner_visual_tokens_total"
    ) == N_VISUAL * len(kept)


def test_selection_latency_and_backend_come_from_the_worker(server, http):
    before = scrape(server.base_url)
    # A question never asked before: the encoder cache cannot serve it, so the worker selects.
    body = chat_body(
        keep_ratio=0.25,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": image_data_url(seed=99)},
                    },
                    {"type": "text", "text": f"Fresh question {time.time_ns()}?"},
                ],
            }
        ],
    )
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    after = scrape(server.base_url)
    count = total(after, "mipruner_selection_seconds_count", backend="torch") - total(
        before, "mipruner_selection_seconds_count", backend="torch"
    )
    assert count >= 1, "the worker's selection histogram (multiprocess) did not reach /metrics"
    assert (
        total(after, "mipruner_selected_items_total", backend="torch")
        - total(before, "mipruner_selected_items_total", backend="torch")
        >= 1
    )
    assert sample(after, "mipruner_backend_info", backend="torch") == 1.0
    assert sample(after, "mipruner_backend_info", backend="triton") == 0.0
    # vLLM's own metrics are still there, next to ours.
    assert any(name.startswith("vllm:") for name, _ in after)


def test_metric_names_and_labels_are_bounded(server):
    samples = scrape(server.base_url)
    names = {name for name, _ in samples if name.startswith("mipruner_")}
    assert "mipruner_visual_tokens_total" in names and "mipruner_keep_ratio_bucket" in names
    for name, labels in samples:
        if name.startswith("mipruner_"):
            # engine: the data-parallel index of the store metrics, bounded by the server's flag
            assert set(dict(labels)) <= {
                "model",
                "method",
                "modality",
                "backend",
                "engine",
                "le",
            }, (
                name,
                labels,
            )
            assert ":" not in name


def test_openapi_documents_pruning_fields(http):
    schema = http.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        props = components[request]["properties"]
        for field in ("keep_ratio", "keep_tokens", "mi_lambda", "mi_tau", "pruning_method"):
            assert field in props, (request, field)
            assert props[field].get("description"), (request, field)
        assert set(REQUEST_FIELDS) <= set(props)
        ratio = props["keep_ratio"]["anyOf"][0]
        assert (ratio["type"], ratio["exclusiveMinimum"], ratio["maximum"]) == ("number", 0.0, 1.0)
        assert props["keep_tokens"]["anyOf"][0] == {
            "type": "integer",
            "minimum": 1,
            "maximum": KEEP_TOKENS_MAX,
        }
        assert props["pruning_seed"]["anyOf"][0] == {
            "type": "integer",
            "minimum": 0,
            "maximum": SEED_MAX,
        }
        assert "mi" in props["pruning_method"]["anyOf"][0]["enum"]
    assert set(components["MIPrunerUsage"]["properties"]) == {
        "visual_tokens",
        "visual_tokens_kept",
        "pruning_detail",  # only for requests with pruning_detail: true
    }
    assert props["pruning_detail"]["anyOf"][0]["type"] == "boolean"
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "visual_tokens_kept" in schema["paths"][path]["post"]["description"]


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.slow
@pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (Debian: apt-get install prometheus)"
)
def test_real_prometheus_scrapes_mipruner_series(server, http, tmp_path):
    assert http.post("/v1/chat/completions", json=chat_body(keep_ratio=0.25)).status_code == 200
    target = server.base_url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: mipruner\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        query = f'sum(mipruner_visual_tokens_saved_total{{model="{MODEL}"}})'
        value = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and value is None:
            time.sleep(1)
            try:
                result = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5
                ).json()
            except httpx.HTTPError:
                continue
            if result.get("status") == "success" and result["data"]["result"]:
                value = float(result["data"]["result"][0]["value"][1])
        log = (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
        assert value is not None, f"Prometheus never saw {query}:\n{log}"
        expected = total(scrape(server.base_url), "mipruner_visual_tokens_saved_total", model=MODEL)
        assert value == expected >= N_VISUAL - 4
    finally:
        process.terminate()
        process.wait(timeout=30)
