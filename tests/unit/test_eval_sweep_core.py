# SPDX-License-Identifier: Apache-2.0
"""The sweep's parts without a server: the settings grid, the JSONL format, scoring, the status
of a run (failed runs are never scored), the CSV and the plot."""

from __future__ import annotations

import csv
import json

import httpx
import pytest

from mipruner_vllm.config import SEED_MAX
from mipruner_vllm.evaluation.data import (
    DatasetError,
    is_correct,
    load_items,
    normalize_answer,
    write_demo_dataset,
)
from mipruner_vllm.evaluation.sweep import (
    Setting,
    SweepRow,
    build_settings,
    parse_fields,
    plot,
    read_lmms_eval_results,
    run_jsonl_setting,
    write_csv,
)
from mipruner_vllm.evaluation.sweep.settings import item_fields

pytestmark = pytest.mark.unit


def test_grid_runs_keep_ratio_one_twice_and_lambdas_only_for_mi():
    settings = build_settings(
        [1.0, 0.5, 0.25],
        ["mi", "random"],
        [1.0, 0.5],
        [8],
        {"mi_tau": 0.05},
        [{"keep_ratio": 0.25, "mi_tau": 5000}],
    )
    labels = [s.label for s in settings]
    assert labels[:2] == ["keep_ratio=1.0,mi_tau=0.05", "keep_ratio=1.0,mi_tau=0.05 (run 2)"]
    assert [s.repeat for s in settings[:2]] == [1, 2]
    pruned = settings[2:-1]
    # 2 ratios and 1 token budget, each: mi x 2 lambdas + random.
    assert len(pruned) == 3 * 3
    assert sum(1 for s in pruned if s.fields["pruning_method"] == "random") == 3
    assert all(
        "mi_lambda" not in s.fields for s in pruned if s.fields["pruning_method"] == "random"
    )
    assert {s.fields.get("keep_tokens") for s in pruned} == {None, 8}
    assert settings[-1].fields == {"mi_tau": 5000, "keep_ratio": 0.25}
    assert len({s.slug for s in settings}) == len(settings)
    # 1.0 is run twice even when the list leaves it out.
    assert [s.fields["keep_ratio"] for s in build_settings([0.5])[:2]] == [1.0, 1.0]


def test_parse_fields_types_values_as_json():
    assert parse_fields("keep_ratio=0.25, keep_tokens=64,pruning_method=mi,x=true") == {
        "keep_ratio": 0.25,
        "keep_tokens": 64,
        "pruning_method": "mi",
        "x": True,
    }
    with pytest.raises(Exception, match="FIELD=VALUE"):
        parse_fields("keep_ratio")


def test_jsonl_items_and_errors(tmp_path):
    jsonl = write_demo_dataset(tmp_path / "demo", n_items=12)
    items = load_items(jsonl)
    assert len(items) == 12 and len({i.id for i in items}) == 12
    assert all(i.images[0].startswith("data:image/png;base64,") for i in items)
    assert len({i.images[0] for i in items}) == 12, "every demo image differs"
    assert items[0].answers == ("red",)
    assert len(load_items(jsonl, limit=5)) == 5

    bad = tmp_path / "bad.jsonl"
    for line, message in [
        ('{"image": "x.png", "question": "q"}', "missing key 'answer'"),
        ('{"image": "nope.png", "question": "q", "answer": "a"}', "image file not found"),
        ("not json", "not JSON"),
        ('{"image": "data:image/png;base64,AA", "question": "", "answer": "a"}', "'question'"),
    ]:
        bad.write_text(line + "\n")
        with pytest.raises(DatasetError, match=message) as info:
            load_items(bad)
        assert f"{bad}:1" in str(info.value)
    bad.write_text('{"id": 1, "image": "data:,", "question": "q", "answer": "a"}\n' * 2)
    with pytest.raises(DatasetError, match="duplicate id"):
        load_items(bad)


def test_scoring():
    assert normalize_answer("  The Red bus. ") == "red bus"
    assert is_correct("Red.", ["red"]) and not is_correct("red bus", ["red"])
    assert is_correct("It is a red bus", ["red"], match="contains")
    assert not is_correct("reddish", ["red"], match="contains")
    assert is_correct("two", ["2", "two"]) and not is_correct("", [""])


def _chunks(text: str, usage: dict | None) -> str:
    chunks = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}],
        }
    ]
    if usage is not None:
        chunks.append(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [],
                "usage": usage,
            }
        )
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def _usage(prompt_tokens: int, visual: int | None = None, kept: int | None = None) -> dict:
    """The usage of a one-token answer; with the pruning fields where ``visual`` is given."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1}
    usage["total_tokens"] = prompt_tokens + 1
    if visual is not None:
        usage |= {"visual_tokens": visual, "visual_tokens_kept": kept}
    return usage


def _streamed(answer: str, usage: dict) -> httpx.Response:
    """A 200 streamed chat completion of ``answer`` whose final chunk carries ``usage``."""
    return httpx.Response(
        200, text=_chunks(answer, usage), headers={"content-type": "text/event-stream"}
    )


def _client(handler):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def _run(tmp_path, handler, n=6, *, items=None, setting=None, **kw):
    """One JSONL run against ``handler``: of ``items`` (else ``n`` demo items) at ``setting``
    (else keep_ratio 0.5), with the defaults below overridden by ``kw``."""
    if items is None:
        items = load_items(write_demo_dataset(tmp_path / "d", n_items=n))
    if setting is None:
        setting = Setting({"keep_ratio": 0.5})
    options = dict(
        dataset="items.jsonl",
        run_dir=tmp_path / "run",
        root_url="http://127.0.0.1:9",
        max_tokens=4,
        concurrency=3,
        match="exact",
        allow_failed=0.0,
        progress=False,
    )
    options.update(kw)
    return run_jsonl_setting(_client(handler), "m", items, setting, **options)


def test_a_run_is_scored_from_its_answers(tmp_path):
    def handler(request):
        if request.url.path.endswith("/metrics"):
            return httpx.Response(404)
        body = json.loads(request.content)
        assert body["keep_ratio"] == 0.5 and body["temperature"] == 0.0
        question = body["messages"][0]["content"]
        assert [p["type"] for p in question] == ["image_url", "text"]
        return _streamed("Red.", _usage(30, visual=16, kept=8))

    row = _run(tmp_path, handler)
    assert (row.status, row.items, row.requests_failed) == ("ok", 6, 0)
    samples = [
        json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    ]
    assert len(samples) == 6
    # The model said "red" to every item: right only for the red one.
    assert (
        row.accuracy
        == pytest.approx(sum(s["correct"] for s in samples) / 6)
        == pytest.approx(1 / 6)
    )
    assert (row.visual_tokens, row.visual_tokens_kept, row.kept_fraction) == (96, 48, 0.5)
    assert row.ttft_s_p50 is not None and row.server_ttft_s_mean is None


def test_a_rejected_setting_is_failed_not_scored(tmp_path):
    def handler(request):
        return httpx.Response(
            400,
            json={
                "error": {
                    "message": "Invalid request field 'mi_tau'",
                    "type": "BadRequestError",
                    "param": "mi_tau",
                    "code": 400,
                }
            },
        )

    row = _run(tmp_path, handler)
    assert (row.status, row.requests_failed, row.accuracy, row.visual_tokens_kept) == (
        "failed",
        6,
        None,
        None,
    )
    assert "mi_tau" in row.error


def test_partial_failures_fail_unless_allowed(tmp_path):
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if b"0000-red" in request.content or calls["n"] == 1:
            return httpx.Response(
                500, json={"error": {"message": "boom", "type": "InternalServerError", "code": 500}}
            )
        return _streamed("x", _usage(3, visual=4, kept=2))

    assert _run(tmp_path, handler, concurrency=1).status == "failed"
    calls["n"] = 0
    row = _run(tmp_path, handler, concurrency=1, allow_failed=0.5)
    assert (row.status, row.requests_failed, row.accuracy) == ("partial", 1, 0.0)


def test_an_endpoint_without_pruning_usage_fails_the_setting(tmp_path):
    def handler(request):
        return _streamed("red", _usage(30))

    row = _run(tmp_path, handler)
    assert row.status == "failed" and row.accuracy is None
    assert "not mipruner-vllm serve" in row.error


def _row(setting, keep_ratio, accuracy, status="ok", repeat=1, method="mi", lam=None):
    return SweepRow(
        setting=setting,
        repeat=repeat,
        dataset="items.jsonl",
        status=status,
        items=12,
        requests_failed=0 if status == "ok" else 12,
        accuracy=accuracy,
        metric="exact_match",
        keep_ratio=keep_ratio,
        keep_tokens=None,
        pruning_method=method,
        mi_lambda=lam,
        fields="{}",
        visual_tokens=100,
        visual_tokens_kept=int(100 * keep_ratio),
        kept_fraction=keep_ratio,
        prompt_tokens_mean=50.0,
        ttft_s_p50=0.1 * keep_ratio + 0.05,
        ttft_s_mean=0.1,
        latency_s_p50=0.2,
        server_ttft_s_mean=None,
        wall_s=1.0,
        model="m",
    )


def test_csv_and_plot(tmp_path):
    rows = [
        _row("a", 1.0, 0.80),
        _row("b", 1.0, 0.78, repeat=2),
        _row("c", 0.5, 0.75),
        _row("d", 0.25, 0.70),
        _row("e", 0.25, 0.72, lam=0.5),
        _row("f", 0.25, None, status="failed"),
    ]
    write_csv(rows, tmp_path / "sweep.csv")
    with (tmp_path / "sweep.csv").open() as handle:
        read = list(csv.DictReader(handle))
    assert [r["setting"] for r in read] == list("abcdef")
    assert read[-1]["accuracy"] == "" and read[-1]["status"] == "failed"
    assert float(read[2]["accuracy"]) == 0.75
    plot(rows, tmp_path / "sweep.png", title="m")
    png = (tmp_path / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_lmms_eval_results_are_read_and_missing_ones_raise(tmp_path):
    with pytest.raises(RuntimeError, match="no \\*_results.json"):
        read_lmms_eval_results(tmp_path, "pope", None)
    out = tmp_path / "lmms-eval" / "mipruner-demo"
    out.mkdir(parents=True)
    results = {
        "results": {
            "pope": {
                "alias": "pope",
                "pope_accuracy,none": 0.85,
                "pope_accuracy_stderr,none": "N/A",
                "pope_f1_score,none": 0.8,
            }
        },
        "n-samples": {"pope": {"original": 9000, "effective": 12}},
    }
    (out / "20261201_090000_results.json").write_text(json.dumps(results))
    assert read_lmms_eval_results(tmp_path, "pope", None) == (0.85, "pope_accuracy,none", 12)
    assert read_lmms_eval_results(tmp_path, "pope", "pope_f1_score")[0] == 0.8
    with pytest.raises(RuntimeError, match="no entry for task 'gqa'"):
        read_lmms_eval_results(tmp_path, "gqa", None)
    with pytest.raises(RuntimeError, match="no metric 'exact_match'"):
        read_lmms_eval_results(tmp_path, "pope", "exact_match")


def test_jsonl_as_an_lmms_eval_task(tmp_path):
    from mipruner_vllm.evaluation import lmms_eval_task as task

    jsonl = write_demo_dataset(tmp_path / "demo", n_items=3)
    yaml = task.write_task(jsonl, tmp_path / "tasks")
    text = yaml.read_text()
    assert "task: mipruner_jsonl" in text and "dataset_path: json" in text
    assert "!function mipruner_vllm.evaluation.lmms_eval_task.process_results" in text
    rows = [
        json.loads(line)
        for line in (tmp_path / "tasks" / "mipruner_jsonl.jsonl").read_text().splitlines()
    ]
    assert [r["answers"] for r in rows] == [["red"], ["green"], ["blue"]]
    doc = rows[1]
    (image,) = task.doc_to_visual(doc)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (30, 180, 60)
    assert task.doc_to_text(doc, {"post_prompt": " Be brief."}).endswith("one word. Be brief.")
    assert task.process_results(doc, ["Green."]) == {"exact_match_score": 1.0}
    assert task.process_results(doc, ["red"]) == {"exact_match_score": 0.0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "data:image/png;base64,AA", "question": "q", "answer": "a"}\n')
    with pytest.raises(DatasetError, match="local image files only"):
        task.write_task(bad, tmp_path / "t2")


def test_random_settings_send_a_per_item_seed_derived_from_seed_and_item(tmp_path):
    """A random baseline keeps a different pattern per item (one seed for all would keep the same
    positions in every same-sized image), reproducibly; other methods are sent as set."""
    fields = {"keep_ratio": 0.25, "pruning_method": "random"}
    seeds = {item_fields(fields, f"item-{i}")["pruning_seed"] for i in range(50)}
    assert len(seeds) == 50
    assert item_fields(fields, "item-3") == item_fields(dict(fields), "item-3")
    assert item_fields({**fields, "pruning_seed": 0}, "a") == item_fields(fields, "a")
    assert item_fields({**fields, "pruning_seed": 1}, "a") != item_fields(fields, "a")
    assert all(0 <= s <= SEED_MAX for s in seeds)
    mi = {"keep_ratio": 0.25, "pruning_method": "mi"}
    assert item_fields(mi, "item-3") is mi

    sent = []

    def handler(request):
        if request.url.path.endswith("/metrics"):
            return httpx.Response(404)
        sent.append(json.loads(request.content)["pruning_seed"])
        return _streamed("red", _usage(9, visual=16, kept=4))

    items = load_items(write_demo_dataset(tmp_path / "d", n_items=4))
    row = _run(tmp_path, handler, items=items, setting=Setting(fields), concurrency=1)
    assert row.status == "ok"
    assert sent == [item_fields(fields, item.id)["pruning_seed"] for item in items]
    assert json.loads(row.fields) == fields  # the row names the setting, not the derived seeds


def test_number_fields_are_the_declared_float_parameters():
    from mipruner_vllm.config import PRUNING_PARAMETERS
    from mipruner_vllm.evaluation.fields import NUMBER_FIELDS

    declared = {p.request for p in PRUNING_PARAMETERS if p.kind is float}
    assert NUMBER_FIELDS == declared
    assert {"keep_ratio", "mi_lambda", "mi_tau"} <= NUMBER_FIELDS
    assert "keep_tokens" not in NUMBER_FIELDS and "pruning_seed" not in NUMBER_FIELDS
