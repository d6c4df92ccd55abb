# SPDX-License-Identifier: Apache-2.0
"""Data parallel 2 with two API-server processes (issue 22, item 2).

``mipruner-vllm serve --data-parallel-size 2 --api-server-count 2`` runs two engines (each with
its own worker and its own encoder store, one core each via ``VLLM_CPU_OMP_THREADS_BIND=0|1``)
behind two API-server processes that share the port; vLLM balances requests between the
engines. Checked with the official client and a real ``/metrics`` scrape:

* every response's ``usage`` follows the budget rule, whichever API server and engine served it;
* the request-side counters (written by both API servers) add up exactly to what the clients
  received: visual tokens in, kept and saved, and vLLM's own prompt tokens summed over engines;
* each engine's store is counted apart (``engine`` label "0" and "1", as on vLLM's series): the
  store's hits plus misses over both engines equal the image items the towers saw, and each
  engine's bytes gauge equals the bytes its worker logged for its own store
  (``MIPRUNER_DEBUG_DIR``/``encoder.jsonl``, one worker process per engine);
* a follow-up question is a store hit only on the engine that holds the image: the store is per
  engine, which is what the routing section of ``docs/deploy.md`` is about;
* ``pruning_detail`` (issue 21): whichever API server and engine served a request, its kept
  indices are the ones that engine's worker logged for it, store hits included (both engines'
  workers and both API servers share the host's detail directory).

Marked ``parallel``: two engines want both cores, so CI runs this in its own step.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers.server import (
    MODEL,
    N_VISUAL,
    image_messages,
    openai_client,
    sample,
    scrape,
    selections,
    total,
)

from mipruner_vllm.params import n_keep

pytestmark = [pytest.mark.server, pytest.mark.parallel, pytest.mark.slow]
OWN_SERVER = True  # conftest orders this module last: it replaces the shared server

BUDGETS = ({"keep_ratio": 0.25}, {"keep_ratio": 0.5}, {"keep_tokens": 3}, {"keep_ratio": 1.0})


@pytest.fixture(scope="module")
def dp_server(server_with):
    with pytest.MonkeyPatch.context() as env:
        # One core per engine (vLLM slices the list by local data-parallel rank).
        env.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
        return server_with(
            "--data-parallel-size", "2", "--api-server-count", "2", "--max-num-seqs", "8",
            name="dp2",
        )  # fmt: skip


@pytest.fixture(scope="module")
def client(dp_server):
    return openai_client(dp_server, timeout=600)


def _ask(client, seed: int, question: str, budget: dict, **extra):
    response = client.chat.completions.create(
        model=MODEL,
        messages=image_messages(question, seed=seed),
        max_tokens=2,
        temperature=0.0,
        extra_body={**budget, **extra},
    )
    return budget, response.usage


def _encoder_log(server) -> dict[int, list[dict]]:
    path = server.debug_dir / "encoder.jsonl"
    per_pid: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        per_pid.setdefault(record["pid"], []).append(record)
    return per_pid


def test_usage_and_request_metrics_are_exact_across_engines_and_api_servers(dp_server, client):
    before = scrape(dp_server.base_url)
    jobs = [(1000 + i, f"Question {i}?", BUDGETS[i % len(BUDGETS)]) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: _ask(client, *job), jobs))
    for budget, usage in results:
        assert usage.visual_tokens == N_VISUAL
        assert usage.visual_tokens_kept == n_keep(N_VISUAL, **budget), budget
    after = scrape(dp_server.base_url)

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    assert delta("mipruner_visual_tokens_total") == sum(u.visual_tokens for _, u in results)
    kept = sum(u.visual_tokens_kept for _, u in results)
    assert delta("mipruner_visual_tokens_kept_total") == kept
    assert delta("mipruner_visual_tokens_saved_total") == len(results) * N_VISUAL - kept
    assert delta("vllm:prompt_tokens_total") == sum(u.prompt_tokens for _, u in results)
    # vLLM's balancer spread the requests: both engines finished some.
    per_engine = {
        engine: total(after, "vllm:request_success_total", engine=engine)
        - total(before, "vllm:request_success_total", engine=engine)
        for engine in ("0", "1")
    }
    assert sum(per_engine.values()) == len(results) and all(per_engine.values()), per_engine


def test_each_engines_store_is_counted_apart(dp_server, client):
    # Every image so far was new: one miss each, on the engine that encoded it.
    samples = scrape(dp_server.base_url)
    misses = {e: total(samples, "mipruner_encoder_store_misses_total", engine=e) for e in "01"}
    hits = {e: total(samples, "mipruner_encoder_store_hits_total", engine=e) for e in "01"}
    log = _encoder_log(dp_server)
    assert len(log) == 2, "one worker process per engine"
    logged = sorted(
        (sum(b["misses"] for b in batches), sum(b["hits"] for b in batches))
        for batches in log.values()
    )
    assert logged == sorted((misses[e], hits[e]) for e in "01")
    assert sum(misses.values()) + sum(hits.values()) >= 16 and all(misses.values())
    gauges = sorted(sample(samples, "mipruner_encoder_store_bytes", engine=e) for e in "01")
    assert gauges == sorted(batches[-1]["store_bytes"] for batches in log.values())
    assert all(g > 0 for g in gauges)


def test_follow_up_hits_only_the_engine_that_holds_the_image(dp_server, client):
    before = scrape(dp_server.base_url)
    # New questions about one image, one at a time: each lands on whichever engine vLLM picks.
    for i in range(6):
        _ask(client, 4242, f"Follow-up question number {i}?", {"keep_ratio": 0.25})
    after = scrape(dp_server.base_url)

    def delta(name: str, engine: str) -> float:
        return total(after, name, engine=engine) - total(before, name, engine=engine)

    misses = {e: delta("mipruner_encoder_store_misses_total", e) for e in "01"}
    hits = {e: delta("mipruner_encoder_store_hits_total", e) for e in "01"}
    # Each engine encodes the image at most once (its first request there), then hits its store.
    assert sum(misses.values()) + sum(hits.values()) == 6
    assert all(m <= 1 for m in misses.values()) and sum(misses.values()) >= 1
    # The server keeps answering plain text while both engines are up.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    assert (
        httpx.post(dp_server.api + "/chat/completions", json=body, timeout=300).status_code == 200
    )


@pytest.fixture(scope="module")
def query_ids(demo_model_dir):
    """The worker's query token ids of a question (the question only, no template)."""
    from transformers import AutoTokenizer

    from mipruner_vllm.server.launcher import DEMO_ARCH, DEMO_SIZE

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir(DEMO_ARCH, DEMO_SIZE))
    return lambda question: tuple(tokenizer.encode(question, add_special_tokens=False))


def _counted_per_process(server) -> dict[str, float]:
    """``mipruner_visual_tokens_total`` per process, from prometheus_client's multiprocess files
    (one per process; only the API servers count requests). The launcher made the directory and
    put it in its children's environment."""
    import psutil
    from prometheus_client.mmap_dict import MmapedDict

    children = psutil.Process(server.process.pid).children(recursive=True)
    directory = next(
        Path(env["PROMETHEUS_MULTIPROC_DIR"])
        for env in (child.environ() for child in children)
        if "PROMETHEUS_MULTIPROC_DIR" in env
    )
    counted: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "mipruner_visual_tokens_total":
                pid = path.stem.removeprefix("counter_")
                counted[pid] = counted.get(pid, 0.0) + value
    return counted


def test_detail_is_what_the_serving_engine_selected(dp_server, client, query_ids):
    before = len(selections(dp_server))
    counted_before = _counted_per_process(dp_server)
    jobs = [(2000 + i, f"Which patch matters for question {i}?", BUDGETS[i % 3]) for i in range(12)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: _ask(client, *job, pruning_detail=True), jobs))
    logged = {tuple(r["text_ids"]): r for r in selections(dp_server)[before:]}
    assert len(logged) == len(jobs)  # one selection per request, each its own question
    engines = set()
    for (_, question, budget), (_, usage) in zip(jobs, results, strict=True):
        [item] = usage.model_extra["pruning_detail"]
        record = logged[query_ids(question)]
        assert item["kept"] == record["kept"], question
        assert len(item["kept"]) == item["visual_tokens_kept"] == n_keep(N_VISUAL, **budget)
        engines.add(record["pid"])
    assert len(engines) == 2, "both engines served detail requests"
    # Both API-server processes answered some of them: each counted its requests' visual tokens.
    counted = _counted_per_process(dp_server)
    served = [pid for pid, value in counted.items() if value > counted_before.get(pid, 0.0)]
    assert len(served) == 2, (counted_before, counted)
    assert sum(counted.values()) - sum(counted_before.values()) == len(jobs) * N_VISUAL


def test_follow_up_from_an_engines_store_reports_its_detail(dp_server, client, query_ids):
    """One image, new questions one at a time: each engine encodes it at most once, so at
    least two of four are store hits, and every one reports the indices its engine kept."""
    path = dp_server.debug_dir / "encoder.jsonl"
    hits_with_detail = 0
    for i in range(4):
        batches, before = len(path.read_text().splitlines()), len(selections(dp_server))
        question = f"Stored image, question {i}?"
        _, usage = _ask(client, 5151, question, {"keep_ratio": 0.25}, pruning_detail=True)
        [item] = usage.model_extra["pruning_detail"]
        [record] = selections(dp_server)[before:]
        assert tuple(record["text_ids"]) == query_ids(question)
        assert item["kept"] == record["kept"] and len(item["kept"]) == n_keep(
            N_VISUAL, keep_ratio=0.25
        )
        [batch] = [json.loads(line) for line in path.read_text().splitlines()[batches:]]
        assert batch["pid"] == record["pid"] and batch["hits"] + batch["misses"] == 1
        hits_with_detail += batch["hits"]
    assert hits_with_detail >= 2
