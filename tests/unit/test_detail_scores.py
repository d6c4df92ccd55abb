# SPDX-License-Identifier: Apache-2.0
"""``pruning_detail_scores``: each item's per-token ranking scores, from the worker to usage.

The scores against DESIGN's equations (by hand, and against the reference they come from), the
kept set against them (MI-Pruner with lambda 1 and the similarity baseline keep their top-k),
the methods without a score, the fallback, the worker record (rounding), the response bound the
scores share with the indices, and the field's validation.
"""

from __future__ import annotations

import math

import pytest
import torch

from mipruner_vllm import detail, resolve_params, select_tokens
from mipruner_vllm.config import MiprunerSettings
from mipruner_vllm.errors import PruningParameterError
from mipruner_vllm.integration.fields import decode_params, encode_params
from mipruner_vllm.outcome import ItemOutcome, RequestOutcome
from mipruner_vllm.params import n_keep, params_from_request
from mipruner_vllm.pruning import encoder_batch, reference
from mipruner_vllm.pruning.scores import SCORE_DIGITS, item_scores, rounded

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("own_detail_dir")]

# test_equations.py's plane: v1 = (1, 0), v2 = (0, 1), v3 = (1, 1)/sqrt(2); t1 = (1, 0),
# t2 = (0, 1) after normalisation; tau = 1.
V = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
T = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
SIG = math.e / (1 + math.e)


def _params(**values):
    return resolve_params(pruning_detail=True, pruning_detail_scores=True, **values)


def _embeddings(n_visual: int, n_text: int, seed: int, hidden: int = 24):
    generator = torch.Generator().manual_seed(seed)
    visual = torch.randn(n_visual, hidden, generator=generator)
    return visual, torch.randn(n_text, hidden, generator=generator)


def test_mi_scores_are_s_cross_by_hand_eq19_and_eq21() -> None:
    # Eq. (19): S_cross = max_j PMI = log(2 sig) for v1 and v2, 0 for v3 (PMI 0 with both).
    scores = item_scores(1, V, T, _params(keep_tokens=1, mi_tau=1.0))
    torch.testing.assert_close(
        scores.values, torch.tensor([math.log(2 * SIG), math.log(2 * SIG), 0.0])
    )
    assert "Eq. 19" in scores.meaning and scores.reason is None
    # Eq. (21): sum_j p(t_j|v_i) PMI(v_i; t_j), a KL divergence for v1 and v2.
    mean = item_scores(1, V, T, _params(keep_tokens=1, mi_tau=1.0, aggregation="mean"))
    kl = SIG * math.log(2 * SIG) + (1 - SIG) * math.log(2 * (1 - SIG))
    torch.testing.assert_close(mean.values, torch.tensor([kl, kl, 0.0]))
    assert "Eq. 21" in mean.meaning


@pytest.mark.parametrize("normalization", ["softmax", "minmax"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_mi_lambda_1_keeps_the_top_k_of_its_scores(aggregation, normalization) -> None:
    visual, text = _embeddings(48, 5, seed=3)
    fields = {"keep_ratio": 0.25, "aggregation": aggregation, "normalization": normalization}
    scores = item_scores(1, visual, text, _params(**fields))
    expected = reference.cross_modal_scores(visual, text, 0.1, aggregation, normalization)
    torch.testing.assert_close(scores.values, expected, rtol=0, atol=0)
    kept = select_tokens(visual, text, backend="torch", **fields)
    k = n_keep(48, keep_ratio=0.25)
    assert torch.equal(kept, reference.topk_indices(scores.values, k))
    # The reported (rounded) scores still rank the kept set first: rounding is monotonic.
    shown = rounded(scores.values)
    kept_set = set(kept.tolist())
    assert min(shown[i] for i in kept_set) >= max(shown[i] for i in range(48) if i not in kept_set)


def test_mi_lambda_below_1_reports_the_relevance_term_it_starts_from() -> None:
    visual, text = _embeddings(40, 4, seed=4)
    greedy = item_scores(1, visual, text, _params(keep_tokens=6, mi_lambda=0.3))
    one_pass = item_scores(1, visual, text, _params(keep_tokens=6))
    torch.testing.assert_close(greedy.values, one_pass.values, rtol=0, atol=0)
    assert "starts from" in greedy.meaning and "starts from" not in one_pass.meaning
    kept = select_tokens(visual, text, keep_tokens=6, mi_lambda=0.3, backend="torch")
    assert int(torch.argmax(greedy.values)) in kept.tolist()  # the greedy's first pick (Eq. 24)


def test_similarity_and_trimtokenator_scores() -> None:
    visual, text = _embeddings(30, 3, seed=5)
    similarity = item_scores(1, visual, text, _params(keep_tokens=7, method="similarity"))
    cosine = torch.nn.functional.cosine_similarity(visual[:, None], text[None], dim=-1)
    torch.testing.assert_close(similarity.values, cosine.amax(-1))
    kept = select_tokens(visual, text, keep_tokens=7, method="similarity", backend="torch")
    assert torch.equal(kept, reference.topk_indices(similarity.values, 7))

    trim = item_scores(1, visual, text, _params(keep_tokens=7, method="trimtokenator"))
    alpha = -((visual[:, None] - text[None]) ** 2).sum(-1).mean(-1)  # -(1/N_T) sum ||v - t||^2
    torch.testing.assert_close(trim.values, alpha, rtol=1e-5, atol=1e-4)
    # Stage 2 picks among stage 1's top N_1 of these scores.
    kept = select_tokens(visual, text, keep_tokens=7, method="trimtokenator", backend="torch")
    stage1 = set(reference.topk_indices(trim.values, n_keep(30, keep_ratio=0.8)).tolist())
    assert set(kept.tolist()) <= stage1 and "stage 1" in trim.meaning


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"method": "random"}, "random ranks by no score"),
        ({"method": "divprune"}, "divprune ranks by no static score"),
    ],
)
def test_methods_without_a_score_say_why(fields, reason) -> None:
    visual, text = _embeddings(10, 2, seed=6)
    scores = item_scores(1, visual, text, _params(keep_tokens=3, **fields))
    assert scores.values is None and reason in scores.reason
    no_text = item_scores(1, visual, text[:0], _params(keep_tokens=3))
    assert no_text.values is None and "no query text" in no_text.reason
    inf = visual.clone()
    inf[2, 0] = float("inf")
    broken = item_scores(1, inf, text, _params(keep_tokens=3))
    assert broken.values is None and broken.reason.startswith("non_finite")


def test_frame_wise_items_are_scored_frame_by_frame() -> None:
    visual, text = _embeddings(24, 3, seed=7)
    params = _params(keep_tokens=6)
    scores = item_scores(3, visual, text, params)
    per_frame = [reference.cross_modal_scores(f, text, 0.1) for f in visual.chunk(3)]
    torch.testing.assert_close(scores.values, torch.cat(per_frame), rtol=0, atol=0)
    kept = encoder_batch.select_frames([3], [visual], [text], [params]).indices[0]
    for frame, budget in enumerate(params.n_keep_per_frame(3, 8)):
        own = kept[(kept >= 8 * frame) & (kept < 8 * frame + 8)] - 8 * frame
        assert torch.equal(own, reference.topk_indices(per_frame[frame], budget))


def _select(requests, embeds):
    table = torch.randn(20, embeds[0].shape[1], generator=torch.Generator().manual_seed(9))
    items = [encoder_batch.EncodedItem("image", e, e.shape[1]) for e in embeds]
    timer = encoder_batch.SelectionTimer(lambda *_: None)
    return encoder_batch.select_items(
        items, requests, lambda ids, _: [table[i] for i in ids], timer
    )


def test_the_worker_scores_only_items_that_ask_and_reports_fallbacks() -> None:
    clean, _ = _embeddings(16, 1, seed=8)
    broken = clean.clone()
    broken[3, 1] = float("nan")
    query = torch.tensor([1, 4, 7])
    asked = resolve_params(keep_tokens=4, pruning_detail=True, pruning_detail_scores=True)
    plain = resolve_params(keep_tokens=4, pruning_detail=True)
    chosen = _select(
        [
            encoder_batch.ItemRequest(asked, query, detail_token=5),
            encoder_batch.ItemRequest(plain, query, detail_token=6),  # detail without scores
            encoder_batch.ItemRequest(asked, query, detail_token=7),
        ],
        [clean, clean, broken],
    )
    assert chosen[1].scores is None  # not asked: nothing computed
    assert chosen[2].scores.values is None and chosen[2].scores.reason.startswith("non_finite")
    values = chosen[0].scores.values
    assert torch.equal(chosen[0].selected, reference.topk_indices(values, 4))

    item = encoder_batch.EncodedItem("image", clean, clean.shape[1])
    request = encoder_batch.ItemRequest(asked, query, 5)
    record = encoder_batch.detail_record(item, request, chosen[0])
    shown = record["scores"]["values"]
    assert len(shown) == 16 and shown == [float(f"{x:.{SCORE_DIGITS}g}") for x in values.tolist()]
    pairs = zip(shown, values.tolist(), strict=True)
    assert all(abs(a - b) <= 5e-4 * abs(b) + 1e-9 for a, b in pairs)  # 4 significant digits
    assert "Eq. 19" in record["scores"]["meaning"]
    plain_record = encoder_batch.detail_record(
        item, encoder_batch.ItemRequest(plain, query, 6), chosen[1]
    )
    assert "scores" not in plain_record  # a request without the field: the record of before
    whole = encoder_batch.detail_record(item, request, None)  # not pruned
    assert whole["scores"]["values"] is None and "nothing was dropped" in whole["scores"]["reason"]


def _scored_record(n: int, kept: list[int]) -> dict:
    scores = {"values": [float(i) for i in range(n)], "meaning": "S_cross", "reason": None}
    return detail.worker_record(n, kept, "mi", None, scores)


def test_scores_count_toward_the_response_bound(monkeypatch) -> None:
    monkeypatch.setattr(detail, "MAX_RESPONSE_INDICES", 22)
    tokens = [detail.new_token() for _ in range(3)]
    for token in tokens:
        detail.write_item(token, _scored_record(8, [0, 1]))
    outcome = RequestOutcome(
        [ItemOutcome("image", 8, 2, "mi", t, (1, 2, 4), detail_scores=True) for t in tokens]
    )
    first, second, third = outcome.pruning_detail()
    assert first["scores"] == [float(i) for i in range(8)] and first["score"] == "S_cross"
    assert "scores_omitted" not in first
    # Each item uses 2 indices + 8 scores: 20 after two items; the third's indices fit (22),
    # its scores do not.
    assert second["kept"] == [0, 1] and second["scores"] == list(map(float, range(8)))
    assert third["kept"] == [0, 1] and third["scores"] is None
    assert "bound of 22" in third["scores_omitted"]


def test_scores_missing_or_mismatched_are_reported_not_hidden() -> None:
    token, short, unscored = (detail.new_token() for _ in range(3))
    detail.write_item(short, detail.worker_record(8, [0], "mi", None, {"values": [1.0]}))
    reason = "random ranks by no score (a seeded uniform draw)"
    detail.write_item(
        unscored, detail.worker_record(8, [0], "random", None, {"values": None, "reason": reason})
    )
    items = [ItemOutcome("image", 8, 1, "mi", t, (1, 2, 4), True) for t in (token, short, unscored)]
    missing, mismatch, none = RequestOutcome(items).pruning_detail()
    assert missing["scores"] is None and missing["scores_omitted"] == "not reported by the worker"
    assert mismatch["scores"] is None and "1 scores for 8 tokens" in mismatch["scores_omitted"]
    assert none["kept"] == [0] and none["scores"] is None and none["scores_omitted"] == reason
    # Without the field an item has no score keys at all (responses as before).
    plain = detail.new_token()
    detail.write_item(plain, _scored_record(8, [0]))
    [entry] = RequestOutcome([ItemOutcome("image", 8, 1, "mi", plain, None)]).pruning_detail()
    assert not {"scores", "score", "scores_omitted"} & set(entry)


def test_the_field_needs_the_detail_and_is_a_strict_boolean() -> None:
    vector = encode_params(_params(keep_ratio=0.5), detail.new_token())
    assert decode_params(vector).pruning_detail_scores is True
    assert decode_params(encode_params(resolve_params())).pruning_detail_scores is False
    with pytest.raises(PruningParameterError) as alone:
        params_from_request({"pruning_detail_scores": True})
    assert alone.value.field == "pruning_detail_scores" and "pruning_detail" in alone.value.message
    for bad in ("yes", 1, [True]):
        with pytest.raises(PruningParameterError) as refused:
            params_from_request({"pruning_detail": True, "pruning_detail_scores": bad})
        assert refused.value.field == "pruning_detail_scores"
    with pytest.raises(ValueError, match="MIPRUNER_PRUNING_DETAIL=true"):
        MiprunerSettings(pruning_detail_scores=True)
    assert MiprunerSettings(pruning_detail=True, pruning_detail_scores=True).pruning_detail_scores
