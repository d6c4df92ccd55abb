# SPDX-License-Identifier: Apache-2.0
"""The pruning-detail hand-over without an engine: tokens, files, bounds, the usage rewrite.

The worker writes one file per item (:func:`mipruner_vllm.detail.write_item`), the API server
takes it once (:meth:`RequestOutcome.pruning_detail`) and deletes whatever is left when the
request ends; the response's indices are bounded; the params vector carries the token.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from mipruner_vllm import detail, resolve_params
from mipruner_vllm.integration.fields import decode_params, detail_token, encode_params
from mipruner_vllm.outcome import ItemOutcome, RequestOutcome, collect, record_item
from mipruner_vllm.pruning import encoder_batch
from mipruner_vllm.server.usage import UsageRewriter, usage_fields

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("own_detail_dir")]


def test_the_params_vector_carries_the_token_and_decodes_to_a_boolean() -> None:
    params = resolve_params(keep_ratio=0.5, pruning_detail=True)
    token = detail.new_token()
    vector = encode_params(params, token)
    assert detail_token(vector) == token > 0
    assert decode_params(vector).pruning_detail is True
    assert detail_token(encode_params(params)) == 0
    assert decode_params(encode_params(resolve_params())).pruning_detail is False
    assert len({detail.new_token() for _ in range(1000)}) == 1000


def test_worker_file_is_taken_once_and_private() -> None:
    token = detail.new_token()
    detail.write_item(token, detail.worker_record(16, [1, 5], "mi", None))
    path = detail.detail_dir() / f"{token:016x}.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(detail.detail_dir().stat().st_mode & 0o777) == "0o700"
    assert detail.take_item(token) == {
        "n_visual": 16,
        "kept": [1, 5],
        "method": "mi",
        "fallback": None,
    }
    assert detail.take_item(token) is None and not path.exists()


def test_outcome_builds_the_detail_in_prompt_order_and_discards_leftovers() -> None:
    tokens = [detail.new_token() for _ in range(3)]
    detail.write_item(tokens[0], detail.worker_record(4, None, "none", None))
    detail.write_item(tokens[2], detail.worker_record(6, [0, 2, 4], "uniform_stride", "non_finite"))
    stray = detail.new_token()
    detail.write_item(stray, detail.worker_record(1, None, "none", None))
    with collect() as outcome:
        record_item("image", 4, 4, "none", detail_token=tokens[0], grid=(1, 2, 2))
        record_item("video", 8, 2, "mi", detail_token=tokens[1], grid=(2, 2, 2))
        record_item("image", 6, 3, "mi", detail_token=tokens[2], grid=None)
    first = outcome.pruning_detail()
    assert outcome.pruning_detail() is first  # read once, kept for the rest of the response
    assert [d["modality"] for d in first] == ["image", "video", "image"]
    assert first[0]["kept"] == [0, 1, 2, 3] and first[0]["grid"] == [1, 2, 2]
    assert first[1]["kept"] is None and first[1]["omitted"] == "not reported by the worker"
    assert first[2]["kept"] == [0, 2, 4] and first[2]["fallback"] == "non_finite"
    assert first[2]["method"] == "uniform_stride"
    # A file the worker writes after the response was assembled is deleted when it ends.
    detail.write_item(tokens[1], detail.worker_record(8, [0, 1], "mi", None))
    outcome.discard_detail()
    remaining = {p.name for p in detail.detail_dir().iterdir()}
    assert remaining == {f"{stray:016x}.json"}  # another request's file is not touched
    os.utime(detail.detail_dir() / f"{stray:016x}.json", (0, 0))
    assert detail.sweep(now=time.time()) == 1


def test_no_field_no_detail_and_no_file_access() -> None:
    outcome = RequestOutcome([ItemOutcome("image", 16, 4, "mi")])
    assert usage_fields(outcome) == {"visual_tokens": 16, "visual_tokens_kept": 4}
    assert outcome.pruning_detail() is None
    assert not detail.detail_dir().exists() or not any(detail.detail_dir().iterdir())


def test_asked_without_media_is_an_empty_list_in_the_final_usage_only() -> None:
    outcome = RequestOutcome(detail_asked=True)
    assert outcome.pruning_detail() == []
    assert usage_fields(outcome) == {
        "visual_tokens": 0,
        "visual_tokens_kept": 0,
        "pruning_detail": [],
    }
    assert "pruning_detail" not in usage_fields(outcome, final=False)


def test_indices_are_bounded_per_response(monkeypatch) -> None:
    monkeypatch.setattr(detail, "MAX_RESPONSE_INDICES", 10)
    tokens = [detail.new_token() for _ in range(3)]
    for token, kept in zip(tokens, ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4], [7]), strict=True):
        detail.write_item(token, detail.worker_record(8, kept, "mi", None))
    outcome = RequestOutcome(
        [
            ItemOutcome("image", 8, n, "mi", t, (1, 2, 4))
            for n, t in zip((6, 5, 1), tokens, strict=True)
        ]
    )
    first, second, third = outcome.pruning_detail()
    assert len(first["kept"]) == 6
    assert second["kept"] is None and "bound of 10" in second["omitted"]
    assert third["kept"] == [7]  # a later small item still fits


def test_a_mismatch_between_worker_and_prompt_is_reported_not_hidden() -> None:
    token = detail.new_token()
    detail.write_item(token, detail.worker_record(8, [0, 1, 2], "mi", None))
    [entry] = RequestOutcome([ItemOutcome("image", 8, 2, "mi", token, None)]).pruning_detail()
    assert entry["kept"] is None and "reported 3 of 8" in entry["omitted"]


def test_detail_only_in_the_final_usage_of_a_stream() -> None:
    token = detail.new_token()
    detail.write_item(token, detail.worker_record(4, [1], "mi", None))
    outcome = RequestOutcome([ItemOutcome("image", 4, 1, "mi", token, (1, 2, 2))])
    rewriter = UsageRewriter("sse", lambda final: usage_fields(outcome, final))
    stream = (
        b'data: {"model":"m","choices":[{"delta":{"content":"a"}}],"usage":{"total_tokens":1}}\n\n'
        b'data: {"model":"m","choices":[],"usage":{"total_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    events = [e for e in rewriter.feed(stream).split(b"\n\n") if e.startswith(b"data: {")]
    first, last = (json.loads(e[len(b"data: ") :])["usage"] for e in events)
    assert "pruning_detail" not in first and first["visual_tokens_kept"] == 1
    assert last["pruning_detail"][0]["kept"] == [1]


def test_worker_reports_what_it_used() -> None:
    """``detail_record``: all rows of an unpruned item, the selected prunable rows (fixed rows
    excluded) of a pruned one, the fallback as ``uniform_stride`` with its reason."""
    fixed = torch.tensor([False, True, False, False, True, False])
    item = encoder_batch.EncodedItem("image", torch.zeros(6, 4), 4, fixed=fixed)
    request = encoder_batch.ItemRequest(resolve_params(keep_tokens=2), torch.zeros(0), 5)
    assert encoder_batch.detail_record(item, request, None)["n_visual"] == 4
    chosen = encoder_batch.ItemSelection(
        torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2]), 4, "torch", None
    )
    assert encoder_batch.detail_record(item, request, chosen) == detail.worker_record(
        4, [1, 2], "mi", None
    )
    fallback = encoder_batch.ItemSelection(
        torch.tensor([0, 1, 4]), torch.tensor([0]), 4, "torch", "non_finite"
    )
    record = encoder_batch.detail_record(item, request, fallback)
    assert record["method"] == "uniform_stride" and record["fallback"] == "non_finite"
