# SPDX-License-Identifier: Apache-2.0
"""Parity of the greedy lambda < 1 kernel (mipruner_vllm.kernels.mi_greedy) with the torch
oracle."""

from __future__ import annotations

import pytest
import torch
from helpers.kernels import TOLERANCES, assert_close_verbose, make_item

from mipruner_vllm.kernels.launch import mi_prune
from mipruner_vllm.pruning import reference

pytestmark = pytest.mark.kernel

#: ``gram_cache_bytes`` of the two step paths: rho_self cached (default budget) or a GEMV per step.
STEP_PATHS = {"cached-rho": None, "gemv": 0}

# One launch per case: (N_V, N_T, N_keep, lambda, tau) per item, plus the hidden size.
CASES = {
    "keep1": ([(23, 3, 1, 0.5, 0.1)], 40),
    "keep-all": ([(20, 2, 20, 0.5, 0.1)], 32),
    "nt1-odd": ([(37, 1, 9, 0.7, 0.1)], 72),
    "lambda0": ([(30, 4, 6, 0.0, 0.1)], 32),
    "multi-block": ([(130, 5, 17, 0.3, 0.05)], 40),
    "varlen-batch": (
        [(37, 5, 10, 0.5, 0.1), (1, 1, 1, 0.2, 0.5), (70, 33, 12, 0.9, 0.07), (9, 2, 4, 0.0, 0.2)],
        48,
    ),
}


def _grid(cases, dtypes):
    """Every case x dtype on the cached-rho path; the GEMV path (slow in the interpreter) on
    every case in fp32 and on the varlen batch in bf16."""
    out = [(c, d, "cached-rho") for c in cases for d in dtypes]
    out += [(c, torch.float32, "gemv") for c in cases]
    out += [("varlen-batch", torch.bfloat16, "gemv")]
    return [pytest.param(c, d, p, id=f"{c}-{str(d)[6:]}-{p}") for c, d, p in out]


@pytest.mark.parametrize(
    "case, dtype, path", _grid(list(CASES), [torch.float32, torch.float16, torch.bfloat16])
)
def test_parity_with_oracle(case, dtype, path, device):
    items, dim = CASES[case]
    visuals, texts = zip(
        *(make_item(nv, nt, dim, dtype, 10 + i, device) for i, (nv, nt, *_) in enumerate(items)),
        strict=True,
    )
    ks = [it[2] for it in items]
    lams = [it[3] for it in items]
    taus = [it[4] for it in items]
    kept, scores = mi_prune(
        list(visuals), list(texts), ks, taus, lams, gram_cache_bytes=STEP_PATHS[path]
    )
    for v, t, k, lam, tau, got, got_scores in zip(
        visuals, texts, ks, lams, taus, kept, scores, strict=True
    ):
        ref_scores = reference.cross_modal_scores(v.cpu(), t.cpu(), tau)
        assert_close_verbose(got_scores, ref_scores, *TOLERANCES[dtype])
        want = reference.select_mi(v.cpu(), t.cpu(), k, lam, tau)
        assert got.dtype == torch.int64 and torch.all(got[1:] > got[:-1])
        assert torch.equal(got.cpu(), want), f"{case}: {got.tolist()} != {want.tolist()}"


def test_redundancy_changes_the_selection(device):
    """Near-duplicate tokens: lambda = 1 keeps both copies, lambda < 1 avoids the second."""
    g = torch.Generator().manual_seed(0)
    visual = torch.randn(16, 32, generator=g)
    text = torch.randn(2, 32, generator=g)
    best = int(reference.cross_modal_scores(visual, text, 0.1).argmax())
    visual[15] = visual[best] * 1.001  # a near copy of the best token
    visual, text = visual.to(device), text.to(device)
    (greedy,), _ = mi_prune([visual], [text], [4], [0.1], [0.5])
    assert torch.equal(greedy.cpu(), reference.select_mi(visual.cpu(), text.cpu(), 4, 0.5, 0.1))
    assert not {best, 15} <= set(greedy.tolist())


def test_launcher_rejects_bad_per_item_values(device):
    """The launcher validates its numbers per item (host-side) and names the item."""
    visual, text = make_item(5, 2, 16, torch.float32, 0, device)
    with pytest.raises(ValueError, match="item 0: mi_lambda"):
        mi_prune([visual], [text], [2], [0.1], [1.5])
    with pytest.raises(ValueError, match="item 0: tau"):
        mi_prune([visual], [text], [2], [0.0], [0.5])
    with pytest.raises(ValueError, match="item 0: aggregation"):
        mi_prune([visual], [text], [2], [0.1], [0.5], ["min"])
    with pytest.raises(ValueError, match="values of mi_lambda"):
        mi_prune([visual], [text], [2], [0.1], [0.5, 0.5])


def test_lambda_one_and_below_share_one_call(device):
    """lambda = 1 items take the top-k phase, lambda < 1 items the greedy search, in one call."""
    items = [make_item(30, 3, 24, torch.float32, 40 + i, device) for i in range(3)]
    visuals, texts = (list(x) for x in zip(*items, strict=True))
    lams = [1.0, 0.4, 1.0]
    kept, _ = mi_prune(visuals, texts, [7, 7, 3], [0.1, 0.1, 0.2], lams)
    for v, t, k, lam, tau, got in zip(
        visuals, texts, [7, 7, 3], lams, [0.1, 0.1, 0.2], kept, strict=True
    ):
        assert torch.equal(got.cpu(), reference.select_mi(v.cpu(), t.cpu(), k, lam, tau))


@pytest.mark.parametrize(
    "case, dtype, path",
    _grid(["nt1-odd", "lambda0", "multi-block", "varlen-batch"], [torch.float32, torch.bfloat16]),
)
def test_mean_aggregation_parity(case, dtype, path, device):
    """Eq. (21) for S_cross and S_self (running sum of p(v_j|v_i) PMI), mixed with max items."""
    items, dim = CASES[case]
    visuals, texts = zip(
        *(make_item(nv, nt, dim, dtype, 30 + i, device) for i, (nv, nt, *_) in enumerate(items)),
        strict=True,
    )
    ks, lams, taus = ([it[j] for it in items] for j in (2, 3, 4))
    aggs = ["mean" if i % 2 == 0 else "max" for i in range(len(items))]
    kept, _ = mi_prune(
        list(visuals), list(texts), ks, taus, lams, aggs, gram_cache_bytes=STEP_PATHS[path]
    )
    for v, t, k, lam, tau, agg, got in zip(visuals, texts, ks, lams, taus, aggs, kept, strict=True):
        want = reference.select_mi(v.cpu(), t.cpu(), k, lam, tau, aggregation=agg)
        assert torch.equal(got.cpu(), want), f"{case}/{agg}: {got.tolist()} != {want.tolist()}"
