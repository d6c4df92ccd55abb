# SPDX-License-Identifier: Apache-2.0
"""Parity of the fused lambda = 1 kernel (mipruner_vllm.kernels.mi_select) with the torch oracle.

Runs under TRITON_INTERPRET=1 on CPU (see conftest.py), natively on a CUDA machine. Shapes are
small on purpose: the interpreter executes every program in Python.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from helpers.kernels import TOLERANCES, assert_close_verbose, assert_same_topk, make_item

from mipruner_vllm.errors import KernelUnavailableError
from mipruner_vllm.kernels._runtime import pack_items
from mipruner_vllm.kernels.launch import mi_prune
from mipruner_vllm.kernels.mi_select import topk_packed
from mipruner_vllm.params import resolve_params
from mipruner_vllm.pruning import reference
from mipruner_vllm.pruning.select import select_batch, select_tokens, select_tokens_batch

pytestmark = pytest.mark.kernel

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Each case is one launch: a list of (N_V, N_T, N_keep) items, plus the hidden size.
CASES = {
    "one-token": ([(1, 1, 1)], 16),
    "nt1-odd": ([(7, 1, 3)], 40),
    "keep1": ([(37, 5, 1)], 72),
    "keep-all": ([(64, 16, 64)], 32),
    "odd-sizes": ([(65, 17, 20)], 72),
    "multi-text-tile": ([(130, 70, 33)], 40),
    "varlen-batch": ([(37, 5, 10), (1, 1, 1), (130, 70, 33), (64, 16, 64), (9, 2, 4)], 48),
}


def _run_case(items, dim, dtype, device, tau=0.1, seed=0):
    visuals, texts = zip(
        *(make_item(nv, nt, dim, dtype, seed + i, device) for i, (nv, nt, _) in enumerate(items)),
        strict=True,
    )
    ks = [k for _, _, k in items]
    taus = [tau * (1 + 0.5 * i) for i in range(len(items))]  # per-item temperatures
    return visuals, texts, ks, taus, mi_prune(list(visuals), list(texts), ks, taus)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_oracle(case, dtype, device):
    items, dim = CASES[case]
    atol, rtol = TOLERANCES[dtype]
    visuals, texts, ks, taus, (kept, scores) = _run_case(items, dim, dtype, device)
    for v, t, k, tau, got_kept, got_scores in zip(
        visuals, texts, ks, taus, kept, scores, strict=True
    ):
        ref_scores = reference.cross_modal_scores(v.cpu(), t.cpu(), tau)
        assert_close_verbose(got_scores, ref_scores, atol, rtol)
        assert_same_topk(got_kept, ref_scores, reference.topk_indices(ref_scores, k), k, atol)


def test_many_chunks_in_topk(device):
    """N_V > BLOCK_N: the radix select and the ordered write cross chunk boundaries."""
    visuals, texts, ks, taus, (kept, scores) = _run_case(
        [(1100, 3, 275)], 16, torch.float32, device
    )
    ref_scores = reference.cross_modal_scores(visuals[0].cpu(), texts[0].cpu(), taus[0])
    assert_close_verbose(scores[0], ref_scores, *TOLERANCES[torch.float32])
    assert_same_topk(kept[0], ref_scores, reference.topk_indices(ref_scores, 275), 275, 1e-4)


def test_ties_go_to_the_lower_index(device):
    """Exact ties in the scores: the top-k kernel keeps the lower index, like a stable sort.

    Scores are crafted (many exact duplicates, -0.0 next to +0.0, negatives) and fed straight to
    the top-k phase, because duplicated *embeddings* do not give bit-equal scores in either
    implementation (matmul rounding depends on the row position).
    """
    g = torch.Generator().manual_seed(3)
    values = torch.tensor([0.5, -1.25, 0.0, -0.0, 3.0, 0.5, 0.5, -1.25, 3.0, 2.0])
    items = [values, values[torch.randint(0, 10, (1500,), generator=g)], torch.zeros(7), values[:1]]
    visuals = [torch.zeros(s.numel(), 16, device=device) for s in items]
    texts = [torch.zeros(1, 16, device=device) for _ in items]
    packed = pack_items(visuals, texts)
    scores = torch.cat(items).to(device)
    for ks in ([1, 1, 1, 1], [3, 700, 4, 1], [6, 1499, 7, 1], [10, 1500, 6, 1], [5, 2, 3, 1]):
        got = topk_packed(scores, packed, ks, [0, 1, 2, 3])
        for s, k, kept in zip(items, ks, got, strict=True):
            want = reference.topk_indices(s, k)
            assert torch.equal(kept.cpu(), want), (k, kept.tolist()[:20], want.tolist()[:20])


def test_zero_vectors_and_negative_zero(device):
    """A zero visual token has logits 0 (oracle convention) and stays selectable."""
    visual, text = make_item(20, 3, 16, torch.float32, 5, device)
    visual[4] = 0.0
    visual[9] = -0.0
    (got,), (scores,) = mi_prune([visual], [text], [8], [0.1])
    ref_scores = reference.cross_modal_scores(visual.cpu(), text.cpu(), 0.1)
    assert_close_verbose(scores, ref_scores, 1e-4, 1e-5)
    assert_same_topk(got, ref_scores, reference.topk_indices(ref_scores, 8), 8, 1e-4)


def test_deterministic(device):
    visuals, texts, ks, taus, (kept1, scores1) = _run_case(
        [(50, 6, 12), (33, 3, 5)], 40, torch.bfloat16, device
    )
    kept2, scores2 = mi_prune(list(visuals), list(texts), ks, taus)
    for a, b in zip(kept1 + scores1, kept2 + scores2, strict=True):
        assert torch.equal(a, b)


def test_bad_budgets_are_rejected(device):
    visual, text = make_item(5, 2, 16, torch.float32, 0, device)
    with pytest.raises(ValueError, match="n_keep"):
        mi_prune([visual], [text], [6], [0.1])
    with pytest.raises(ValueError, match="text token"):
        mi_prune([visual], [text[:0]], [2], [0.1])


def test_select_tokens_backend_triton_matches_torch(device, caplog):
    """The public API with backend='triton' equals backend='torch' on a mixed batch."""
    caplog.set_level(logging.INFO, logger="mipruner_vllm.pruning.dispatch")
    items = [
        (50, 4, 32),
        (33, 2, 24),
        (20, 3, 32),
        (17, 0, 32),
        (9, 5, 32),
        (40, 6, 32),
        (12, 3, 32),
        (25, 4, 32),
    ]
    params = [
        resolve_params(keep_ratio=0.3),
        resolve_params(keep_tokens=7, mi_lambda=0.3, mi_tau=0.2),
        resolve_params(keep_ratio=0.5, method="divprune"),  # no kernel: torch fallback
        resolve_params(keep_ratio=0.5),  # N_T = 0: uniform stride
        resolve_params(keep_ratio=1.0),  # keeps everything
        resolve_params(keep_ratio=0.25, aggregation="mean"),  # Eq. (21): kernels too
        resolve_params(keep_tokens=3, mi_lambda=0.0),
        resolve_params(keep_ratio=0.5, normalization="minmax"),  # no kernel: torch fallback
    ]
    visuals, texts = zip(
        *(make_item(nv, nt, d, torch.float32, i, device) for i, (nv, nt, d) in enumerate(items)),
        strict=True,
    )
    # The pack needs one hidden size per group; item 1 has its own (24) and gets its own launch.
    selection = select_batch(list(visuals), list(texts), params, backend="triton")
    want = select_tokens_batch(
        [v.cpu() for v in visuals], [t.cpu() for t in texts], params, backend="torch"
    )
    for g, w in zip(selection.indices, want, strict=True):
        assert torch.equal(g.cpu(), w)
    # What ran each item, as the dispatcher reports it (the worker's metrics label).
    assert selection.backends == [
        "triton", "triton", "torch", "none", "none", "triton", "triton", "torch"
    ]  # fmt: skip
    assert selection.label == "mixed"
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "selection backend: triton" in messages
    assert "fallback per item" in messages
    one = select_tokens(visuals[0], texts[0], keep_ratio=0.3, backend="triton")
    assert torch.equal(one.cpu(), want[0])


def test_setting_forces_the_backend(device, monkeypatch):
    monkeypatch.setenv("MIPRUNER_BACKEND", "triton")
    from mipruner_vllm.config import get_settings

    get_settings.cache_clear()
    visual, text = make_item(30, 4, 16, torch.float32, 1, device)
    got = select_tokens(visual, text, keep_ratio=0.5)
    assert torch.equal(got.cpu(), reference.select_mi(visual.cpu(), text.cpu(), 15))


def test_forced_triton_without_cuda_or_interpreter_raises(device, monkeypatch):
    if device == "cuda":
        pytest.skip("CUDA present: Triton can always run here")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    visual, text = make_item(10, 2, 16, torch.float32, 0, "cpu")
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET"):
        select_tokens(visual, text, keep_ratio=0.5, backend="triton")
    # Without forcing, CPU tensors take the torch path.
    assert select_tokens(visual, text, keep_ratio=0.5, backend="auto").numel() == 5


@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e3])
def test_extreme_temperatures(tau, device):
    """tau at the validated limits: logits up to +-1000 stay finite in log space (Eqs. 16-17)."""
    visual, text = make_item(45, 6, 24, torch.float32, 7, device)
    (got,), (scores,) = mi_prune([visual], [text], [11], [tau])
    ref_scores = reference.cross_modal_scores(visual.cpu(), text.cpu(), tau)
    assert torch.isfinite(scores).all()
    atol = 1e-4 * max(1.0, 1.0 / tau)  # the scores scale with 1/tau
    assert_close_verbose(scores, ref_scores, atol, 1e-4)
    assert_same_topk(got, ref_scores, reference.topk_indices(ref_scores, 11), 11, atol)


def test_consecutive_views_are_packed_without_a_copy(device):
    """Items that are back-to-back slices of one buffer (vLLM's encoder output) are viewed."""
    g = torch.Generator().manual_seed(11)
    buffer = torch.randn(90, 32, generator=g).to(device)
    visuals = [buffer[:40], buffer[40:41], buffer[41:]]
    texts = [torch.randn(n, 32, generator=g).to(device) for n in (3, 1, 5)]
    packed = pack_items(visuals, texts)
    assert packed.visual.data_ptr() == buffer.data_ptr() and packed.visual.shape == (90, 32)
    gapped = pack_items([buffer[:40], buffer[41:]], texts[::2])  # not consecutive: copied
    assert gapped.visual.data_ptr() != buffer.data_ptr()
    assert torch.equal(gapped.visual, torch.cat([buffer[:40], buffer[41:]]))
    kept, _ = mi_prune(visuals, texts, [10, 1, 12], [0.1, 0.1, 0.1])
    for v, t, k, got in zip(visuals, texts, [10, 1, 12], kept, strict=True):
        assert torch.equal(got.cpu(), reference.select_mi(v.cpu(), t.cpu(), k))


def test_mixed_dtypes_are_packed_in_fp32(device):
    visual, _ = make_item(30, 1, 16, torch.bfloat16, 2, device)
    _, text = make_item(1, 4, 16, torch.float32, 3, device)
    (got,), (scores,) = mi_prune([visual], [text], [9], [0.1])
    ref_scores = reference.cross_modal_scores(visual.cpu(), text.cpu(), 0.1)
    assert_close_verbose(scores, ref_scores, *TOLERANCES[torch.float32])
    assert_same_topk(got, ref_scores, reference.topk_indices(ref_scores, 9), 9, 1e-4)


def test_without_triton_installed(device, monkeypatch):
    """With triton missing, auto/torch still work and a forced triton names the reason."""
    if device == "cuda":
        pytest.skip("checks the CPU fallback")
    monkeypatch.setitem(sys.modules, "triton", None)  # find_spec -> None, import -> ImportError
    visual, text = make_item(12, 3, 16, torch.float32, 4, "cpu")
    with pytest.raises(KernelUnavailableError, match="triton is not installed"):
        select_tokens(visual, text, keep_ratio=0.5, backend="triton")
    assert torch.equal(
        select_tokens(visual, text, keep_ratio=0.5), reference.select_mi(visual, text, 6)
    )


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, mipruner_vllm, mipruner_vllm.kernels\n"
        "from mipruner_vllm.pruning.select import select_tokens\n"
        "v, t = torch.randn(10, 8), torch.randn(2, 8)\n"
        "print(select_tokens(v, t, keep_ratio=0.5, backend='auto').tolist())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", ["nt1-odd", "multi-text-tile", "varlen-batch"])
def test_mean_aggregation_parity(case, dtype, device):
    """Eq. (21) S_i = sum_j p(t_j|v_i) PMI_ij, mixed with max items in one launch."""
    items, dim = CASES[case]
    visuals, texts = zip(
        *(make_item(nv, nt, dim, dtype, 20 + i, device) for i, (nv, nt, _) in enumerate(items)),
        strict=True,
    )
    ks = [k for _, _, k in items]
    aggs = ["mean" if i % 2 == 0 else "max" for i in range(len(items))]
    kept, scores = mi_prune(list(visuals), list(texts), ks, [0.1] * len(items), aggregation=aggs)
    atol, rtol = TOLERANCES[dtype]
    for v, t, k, agg, got, got_scores in zip(visuals, texts, ks, aggs, kept, scores, strict=True):
        ref = reference.cross_modal_scores(v.cpu(), t.cpu(), 0.1, aggregation=agg)
        assert_close_verbose(got_scores, ref, atol, rtol)
        assert_same_topk(got, ref, reference.topk_indices(ref, k), k, atol)
