# SPDX-License-Identifier: Apache-2.0
"""``select_tokens`` / ``select_tokens_batch``: agreement with Algorithm 1 and the output
contract."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.float64_reference import aggregate64, algorithm1, pmi_cross64

from mipruner_vllm import (
    PruningInputError,
    PruningParameterError,
    resolve_params,
    select_tokens,
    select_tokens_batch,
)
from mipruner_vllm.pruning import reference

pytestmark = pytest.mark.unit

METHODS = ["mi", "trimtokenator", "similarity", "random", "divprune"]


def _inputs(n_v: int, n_t: int, d: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_v, d, generator=g), torch.randn(n_t, d, generator=g)


# --- Algorithm 1 on random inputs (the "done when") ----------------------------------


@pytest.mark.parametrize("mi_lambda", [1.0, 0.5])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_float64_algorithm1(mi_lambda, tau, seed):
    visual, text = _inputs(48, 7, seed=seed)
    kept = select_tokens(visual, text, keep_ratio=0.25, mi_lambda=mi_lambda, mi_tau=tau)
    assert kept.tolist() == algorithm1(visual, text, 12, mi_lambda, tau)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("normalization", ["softmax", "minmax"])
@pytest.mark.parametrize("mi_lambda", [1.0, 0.3])
def test_ablation_variants_agree_with_float64(aggregation, normalization, mi_lambda):
    visual, text = _inputs(40, 5, seed=7)
    kept = select_tokens(
        visual,
        text,
        keep_tokens=9,
        mi_lambda=mi_lambda,
        aggregation=aggregation,
        normalization=normalization,
    )
    assert kept.tolist() == algorithm1(visual, text, 9, mi_lambda, 0.1, aggregation, normalization)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("normalization", ["softmax", "minmax"])
def test_cross_scores_match_float64(aggregation, normalization):
    visual, text = _inputs(33, 6, seed=3)
    ours = reference.cross_modal_scores(visual, text, 0.1, aggregation, normalization).double()
    p, pmi = pmi_cross64(visual, text, 0.1, normalization)
    theirs = aggregate64(p, pmi, aggregation)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_self_pmi_columns_stream_across_row_chunks(monkeypatch):
    # The row statistics are built in chunks; a chunk smaller than N_V must give the same column.
    visual, _ = _inputs(50, 1, seed=4)
    whole = reference.SelfPMI(visual, 0.1).column(17)[1]
    monkeypatch.setattr(reference, "_ROW_CHUNK", 8)
    chunked = reference.SelfPMI(visual, 0.1).column(17)[1]
    torch.testing.assert_close(whole, chunked)


def test_lambda_one_greedy_equals_one_pass_top_k():
    visual, text = _inputs(64, 9, seed=5)
    cross = reference.cross_modal_scores(visual, text, 0.1)
    for k in (1, 5, 17, 64):
        assert torch.equal(
            reference.mi_greedy(visual, cross, k, 1.0, 0.1), reference.topk_indices(cross, k)
        )


# --- the output contract, every method --------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_v,ratio", [(1, 0.5), (7, 0.3), (50, 0.1), (50, 0.5), (64, 1.0)])
def test_exact_count_ascending_unique(method, n_v, ratio):
    visual, text = _inputs(n_v, 4)
    kept = select_tokens(visual, text, keep_ratio=ratio, method=method, mi_lambda=0.5)
    expected = max(1, min(n_v, math.ceil(ratio * n_v - 1e-9)))
    assert kept.dtype == torch.int64
    assert kept.shape == (expected,)
    assert torch.all(kept[1:] > kept[:-1])
    assert 0 <= int(kept.min()) and int(kept.max()) < n_v


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method):
    visual, text = _inputs(80, 6)
    first = select_tokens(visual, text, keep_ratio=0.3, method=method, mi_lambda=0.5)
    for _ in range(3):
        assert torch.equal(
            select_tokens(visual, text, keep_ratio=0.3, method=method, mi_lambda=0.5), first
        )


@pytest.mark.parametrize("method", ["mi", "similarity", "trimtokenator", "divprune"])
@pytest.mark.parametrize("mi_lambda", [1.0, 0.5])
def test_ties_go_to_the_lower_index(method, mi_lambda):
    # Every visual token identical: all scores tie, so the lowest indices are kept.
    visual = torch.ones(10, 4)
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    kept = select_tokens(visual, text, keep_tokens=3, method=method, mi_lambda=mi_lambda)
    assert kept.tolist() == [0, 1, 2]


def test_keep_everything_and_more():
    visual, text = _inputs(12, 3)
    for kwargs in (
        {"keep_ratio": 1.0},
        {"keep_tokens": 12},
        {"keep_tokens": 500},
        {"method": "none"},
    ):
        assert select_tokens(visual, text, **kwargs).tolist() == list(range(12))


@pytest.mark.parametrize("method", METHODS)
def test_single_visual_token(method):
    visual, text = _inputs(1, 3)
    assert select_tokens(visual, text, keep_ratio=0.1, method=method).tolist() == [0]


@pytest.mark.parametrize("method", ["mi", "similarity", "trimtokenator"])
@pytest.mark.parametrize("mi_lambda", [1.0, 0.5])
def test_no_text_keeps_a_uniform_stride(method, mi_lambda):
    visual = torch.randn(20, 8)
    kept = select_tokens(
        visual, torch.empty(0, 8), keep_tokens=4, method=method, mi_lambda=mi_lambda
    )
    assert kept.tolist() == [2, 7, 12, 17]
    # The hidden size of an empty text tensor does not matter.
    assert select_tokens(visual, torch.empty(0, 0), keep_tokens=4, method=method).tolist() == [
        2,
        7,
        12,
        17,
    ]


def test_single_text_token():
    # One text token: softmax over it is 1, every PMI is 0 (Eq. 18), all tie -> lowest indices.
    visual, text = _inputs(10, 1)
    assert select_tokens(visual, text, keep_tokens=3).tolist() == [0, 1, 2]


def test_zero_vectors_have_cosine_zero():
    # A zero visual token's logits are all 0: it is indifferent to every text token.
    visual, text = _inputs(6, 3)
    visual[2] = 0.0
    log_cond, _ = reference.cross_modal_pmi(visual, text, 0.1)
    torch.testing.assert_close(log_cond[2].exp(), torch.full((3,), 1 / 3))
    for method in METHODS:
        kept = select_tokens(visual, text, keep_tokens=3, method=method, mi_lambda=0.5)
        assert kept.shape == (3,)
    # All-zero text: every logit 0, all scores tie, lowest indices kept.
    assert select_tokens(visual, torch.zeros(3, 24), keep_tokens=2).tolist() == [0, 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_dtype_is_computed_in_float32(dtype):
    visual, text = _inputs(40, 5)
    low_v, low_t = visual.to(dtype), text.to(dtype)
    for mi_lambda in (1.0, 0.5):
        got = select_tokens(low_v, low_t, keep_ratio=0.25, mi_lambda=mi_lambda)
        want = select_tokens(low_v.float(), low_t.float(), keep_ratio=0.25, mi_lambda=mi_lambda)
        assert torch.equal(got, want)


def test_random_is_seeded():
    visual, text = _inputs(100, 2)
    a = select_tokens(visual, text, keep_ratio=0.2, method="random", seed=1)
    b = select_tokens(visual, text, keep_ratio=0.2, method="random", seed=1)
    c = select_tokens(visual, text, keep_ratio=0.2, method="random", seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # No seed: the settings' seed, so still deterministic.
    assert torch.equal(
        select_tokens(visual, text, keep_ratio=0.2, method="random"),
        select_tokens(visual, text, keep_ratio=0.2, method="random", seed=0),
    )


# --- the batched form -------------------------------------------------------------------------


def test_batch_equals_one_by_one_with_mixed_parameters():
    items = [
        _inputs(n_v, n_t, seed=i)
        for i, (n_v, n_t) in enumerate([(30, 4), (7, 0), (64, 12), (1, 2)])
    ]
    params = [
        resolve_params(keep_ratio=0.25),
        resolve_params(keep_tokens=3, method="similarity"),
        resolve_params(keep_ratio=0.5, mi_lambda=0.4, mi_tau=0.05),
        resolve_params(keep_ratio=0.9, method="divprune"),
    ]
    batched = select_tokens_batch([v for v, _ in items], [t for _, t in items], params)
    single = [
        select_tokens(items[0][0], items[0][1], keep_ratio=0.25),
        select_tokens(items[1][0], items[1][1], keep_tokens=3, method="similarity"),
        select_tokens(items[2][0], items[2][1], keep_ratio=0.5, mi_lambda=0.4, mi_tau=0.05),
        select_tokens(items[3][0], items[3][1], keep_ratio=0.9, method="divprune"),
    ]
    assert [b.tolist() for b in batched] == [s.tolist() for s in single]
    assert [len(b) for b in batched] == [8, 3, 32, 1]


def test_batch_shape_errors_name_the_item():
    visual, text = _inputs(10, 2)
    with pytest.raises(PruningInputError, match=r"visual\[1\] contains NaN"):
        select_tokens_batch(
            [visual, torch.full((3, 24), float("nan"))], [text, text], resolve_params()
        )
    with pytest.raises(PruningInputError, match="2 visual items but 1 text"):
        select_tokens_batch([visual, visual], [text], resolve_params())
    with pytest.raises(PruningInputError, match="2 items but 3 parameter sets"):
        select_tokens_batch([visual, visual], [text, text], [resolve_params()] * 3)


# --- bad input --------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ({"keep_ratio": 0.0}, "keep_ratio", r"\(0, 1\]"),
    ({"keep_ratio": 1.5}, "keep_ratio", r"\(0, 1\]"),
    ({"keep_ratio": -0.2}, "keep_ratio", r"\(0, 1\]"),
    ({"keep_ratio": float("nan")}, "keep_ratio", r"\(0, 1\]"),
    ({"keep_ratio": float("inf")}, "keep_ratio", r"\(0, 1\]"),
    ({"keep_ratio": "half"}, "keep_ratio", r"\(0, 1\]"),
    ({"keep_ratio": True}, "keep_ratio", r"\(0, 1\]"),
    ({"keep_tokens": 0}, "keep_tokens", ">= 1"),
    ({"keep_tokens": -3}, "keep_tokens", ">= 1"),
    ({"keep_tokens": 2.5}, "keep_tokens", ">= 1"),
    ({"keep_tokens": True}, "keep_tokens", ">= 1"),
    ({"keep_ratio": 0.5, "keep_tokens": 3}, "keep_tokens", "not both"),
    ({"method": "magic"}, "method", "one of mi, trimtokenator"),
    ({"mi_lambda": 1.2}, "mi_lambda", r"\[0, 1\]"),
    ({"mi_lambda": -0.1}, "mi_lambda", r"\[0, 1\]"),
    ({"mi_tau": 0.0}, "mi_tau", r"\[0.001, 1000\]"),
    ({"mi_tau": float("nan")}, "mi_tau", r"\[0.001, 1000\]"),
    ({"aggregation": "sum"}, "aggregation", "one of max, mean"),
    ({"normalization": "l2"}, "normalization", "one of softmax, minmax"),
    ({"trim_stage1_ratio": 0.0}, "trim_stage1_ratio", r"\(0, 1\]"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"method": "none", "keep_ratio": 0.5}, "method", "keeps every token"),
    ({"backend": "cuda"}, "backend", "one of auto, torch, triton"),
]


@pytest.mark.parametrize("kwargs,field,allowed", BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument_and_allowed_values(kwargs, field, allowed):
    visual, text = _inputs(10, 3)
    with pytest.raises(PruningParameterError, match=f"^{field}: .*{allowed}") as info:
        select_tokens(visual, text, **kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


BAD_TENSORS = [
    (torch.randn(10), torch.randn(3, 24), "visual must be 2-D"),
    (torch.randn(10, 24), torch.randn(3, 24, 1), "text must be 2-D"),
    (torch.randn(0, 24), torch.randn(3, 24), "at least one token"),
    (
        torch.randn(10, 24),
        torch.randn(3, 16),
        "hidden size 16 does not match visual hidden size 24",
    ),
    (torch.ones(10, 24, dtype=torch.int64), torch.randn(3, 24), "floating-point"),
    (torch.tensor([[float("nan")] * 24] * 2), torch.randn(3, 24), "visual contains NaN or inf"),
    (torch.randn(10, 24), torch.tensor([[float("inf")] * 24]), "text contains NaN or inf"),
    ([[1.0, 2.0]], torch.randn(3, 2), "visual must be a torch.Tensor"),
]


@pytest.mark.parametrize("visual,text,message", BAD_TENSORS)
def test_bad_tensors(visual, text, message):
    with pytest.raises(PruningInputError, match=message):
        select_tokens(visual, text, keep_ratio=0.5)
