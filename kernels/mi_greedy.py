# SPDX-License-Identifier: Apache-2.0
"""Greedy MI-Pruner (lambda < 1) over a packed varlen batch, all N_keep steps on the device.

With lambda < 1 the score of Eq. (22) has a redundancy term that depends on the set S already
kept (MI-Pruner, arXiv 2604.03072, Algorithm 1, lines 12-19):

    rho_self_ij     = v~_i . v~_j / tau                                       (Eq. 15)
    log p(v_j|v_i)  = rho_self_ij - logsumexp_j' rho_self_ij'                 (Eq. 16)
    PMI(v_i; v_j)   = log p(v_j|v_i) + log N_V                                (Eq. 18)
    S_self_i        = max_{j in S} PMI(v_i; v_j), 0 while S is empty          (Eq. 20)
    score_i         = lambda S_cross_i - (1 - lambda) S_self_i                (Eq. 22)
    pick            = argmax_{i not in S} score_i, lower index on ties        (Eq. 24)

Pass plan (S_cross comes from phases 1-3 of :mod:`mipruner_vllm.kernels.mi_select`):

1. ``_mi_self_lse_kernel`` (one program per BLOCK_V rows of an item, whole batch in one launch):
   the row logsumexp of rho_self, flash-attention style: column tiles of V streamed with an
   online max/sum, so the N_V x N_V matrix never exists. This is the O(N_V^2 d) part.
   When the launch's N_V x N_V matrices fit :data:`GRAM_CACHE_BYTES` the tiles of rho_self are
   stored on the way (they are computed anyway).
2. ``_mi_greedy_kernel`` (one persistent program per item): the N_keep dependent steps run in a
   device loop, with no host synchronisation and no launch per step. Each step is one pass over
   the item's rows that (a) gets the column rho_self[:, pick] (one cached row of N_V floats,
   or, above the cache budget, a GEMV of V against the token just picked), (b) folds it into
   the running S_self (max), marks the pick, and (c) finds the next argmax of Eq. (22) in the
   same pass. A picked token gets S_self = +inf, so its score is
   -inf (1 - lambda > 0) and it can never win again: no separate "selected" mask is needed.
   Among unselected tokens the argmax keeps the first maximum (``tl.argmax`` ties left inside a
   chunk, a strict ``>`` across chunks), i.e. ties go to the lower index. A final pass writes
   the marked tokens in ascending order.

The steps are inherently sequential, and a grid-wide barrier between programs of one item would
deadlock the interpreter (it runs programs one after another), hence one program per item: items
of a batch run in parallel, the steps of one item do not.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mipruner_vllm.kernels._runtime import PackedItems, block_table, host_tensor, upcast_dot
from mipruner_vllm.kernels.mi_select import BLOCK_D, BLOCK_V, DOT_NUM_WARPS
from mipruner_vllm.kernels.tiles import dot_tile, item_span, online_logsumexp, row_block

#: Column tile of the self-similarity logsumexp.
BLOCK_C = 64
#: Largest rho_self cache (sum of N_V^2 fp32 over the launch's greedy items) kept for the steps:
#: 512 MiB covers e.g. 8 items of 4,096 tokens or one of 11,585. Above it each step recomputes
#: the column with a GEMV over V (N_V x d reads per step instead of N_V).
GRAM_CACHE_BYTES = 512 << 20

#: Rows and hidden chunk of the per-step GEMV, and warps of the persistent greedy program. With
#: 8 warps the 32 x 64 fp32 tile builds without spills on Triton 3.6 and 3.9 for sm_80 and sm_90
#: (AOT check; 4 warps spilled on Triton 3.6 for sm_80), and each item's sequential steps get
#: twice the threads.
BLOCK_R = 32
BLOCK_DG = 64
GREEDY_NUM_WARPS = 8


@triton.jit
def _mi_self_lse_kernel(
    V_ptr,
    VINV_ptr,
    BLOCK_ITEM_ptr,
    BLOCK_ROW_ptr,
    V_OFF_ptr,
    TAU_ptr,
    LSE_ptr,
    GRAM_ptr,
    GRAM_OFF_ptr,
    dim,
    stride_v,
    BLOCK_V: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP32_INPUT: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    STORE_GRAM: tl.constexpr,
):
    """logsumexp_j v~_i . v~_j / tau over the item's tokens j (Eqs. 15-16), per row i.

    With ``STORE_GRAM`` the tiles of rho_self are also written (item b: N_V x N_V fp32 at
    ``GRAM_OFF[b]``), so the greedy steps read one row instead of redoing a GEMV over V.
    """
    item, blk = row_block(BLOCK_ITEM_ptr, BLOCK_ROW_ptr)
    v_start, n_v = item_span(V_OFF_ptr, item)
    inv_tau = 1.0 / tl.load(TAU_ptr + item)
    # 64-bit scalar item base, int32 offsets inside the item (see mi_select).
    v_base = V_ptr + v_start * stride_v
    rows = blk.to(tl.int32) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n_v
    row_inv = tl.load(VINV_ptr + v_start + rows, mask=row_ok, other=0.0) * inv_tau
    v_rows = v_base + rows[:, None] * stride_v
    m_i = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s_i = tl.zeros([BLOCK_V], tl.float32)
    for c0 in range(0, n_v, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < n_v
        c_rows = v_base + cols[:, None] * stride_v
        acc = tl.zeros([BLOCK_V, BLOCK_C], tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            ks = d0 + tl.arange(0, BLOCK_D)
            k_ok = ks < dim
            a = tl.load(v_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(c_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            acc = dot_tile(a, b, acc, FP32_INPUT, UPCAST_DOT)
        col_inv = tl.load(VINV_ptr + v_start + cols, mask=col_ok, other=0.0)
        rho = acc * row_inv[:, None] * col_inv[None, :]
        if STORE_GRAM:
            gram_base = GRAM_ptr + tl.load(GRAM_OFF_ptr + item)
            tl.store(
                gram_base + rows[:, None] * n_v + cols[None, :],
                rho,
                mask=row_ok[:, None] & col_ok[None, :],
            )
        rho = tl.where(col_ok[None, :], rho, float("-inf"))
        m_i, s_i = online_logsumexp(m_i, s_i, rho)
    tl.store(LSE_ptr + v_start + rows, m_i + tl.log(s_i), mask=row_ok)


@triton.jit
def _mi_greedy_kernel(
    V_ptr,
    VINV_ptr,
    SCORE_ptr,
    SELF_LSE_ptr,
    RUN_ptr,
    ITEMS_ptr,
    V_OFF_ptr,
    K_ptr,
    LAMBDA_ptr,
    TAU_ptr,
    AGG_ptr,
    GRAM_ptr,
    GRAM_OFF_ptr,
    OUT_OFF_ptr,
    OUT_ptr,
    dim,
    stride_v,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_GRAM: tl.constexpr,
):
    """All N_keep greedy steps of Eq. (24) for one item; RUN holds the running S_self.

    ``AGG = 0``: S_self_i = max_{j in S} PMI(v_i; v_j) (Eq. 20), RUN starts at -inf;
    ``AGG = 1``: S_self_i = sum_{j in S} p(v_j|v_i) PMI(v_i; v_j) (Eq. 21), RUN starts at 0.
    """
    item = tl.load(ITEMS_ptr + tl.program_id(0)).to(tl.int64)
    v_start, n_v = item_span(V_OFF_ptr, item)
    k = tl.load(K_ptr + item)
    lam = tl.load(LAMBDA_ptr + item)
    inv_tau = 1.0 / tl.load(TAU_ptr + item)
    log_n = tl.log(n_v.to(tl.float32))
    out_start = tl.load(OUT_OFF_ptr + item)
    v_base = V_ptr + v_start * stride_v
    use_mean = tl.load(AGG_ptr + item) == 1
    for r0 in range(0, n_v, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        init = tl.where(use_mean, 0.0, float("-inf")) + tl.zeros([BLOCK_R], tl.float32)
        tl.store(RUN_ptr + v_start + rows, init, mask=rows < n_v)
    tl.debug_barrier()

    # Step 0: S is empty, so score = lambda S_cross (Eq. 22 with S_self = 0). Not argmax S_cross:
    # with lambda = 0 every score is 0 and the tie rule picks index 0, as the oracle does.
    best = float("-inf")
    pick = n_v * 0
    for r0 in range(0, n_v, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        ok = rows < n_v
        s = lam * tl.load(SCORE_ptr + v_start + rows, mask=ok, other=0.0)
        s = tl.where(ok, s, float("-inf"))
        c_best = tl.max(s, axis=0)
        c_arg = r0 + tl.argmax(s, axis=0, tie_break_left=True)
        pick = tl.where(c_best > best, c_arg, pick)
        best = tl.maximum(best, c_best)

    gram_base = GRAM_ptr + tl.load(GRAM_OFF_ptr + item)
    for _ in range(1, k):
        pick_ptr = v_base + pick * stride_v
        pick_inv = tl.load(VINV_ptr + v_start + pick) * inv_tau
        best = float("-inf")
        nxt = n_v * 0
        for r0 in range(0, n_v, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            ok = rows < n_v
            if USE_GRAM:
                # rho_self is symmetric: column `pick` is the contiguous row `pick`.
                rho = tl.load(gram_base + pick * n_v + rows, mask=ok, other=0.0)
            else:
                dot = tl.zeros([BLOCK_R], tl.float32)
                for d0 in range(0, dim, BLOCK_D):
                    ks = d0 + tl.arange(0, BLOCK_D)
                    k_ok = ks < dim
                    a = tl.load(
                        v_base + rows[:, None] * stride_v + ks[None, :],
                        mask=ok[:, None] & k_ok[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    p = tl.load(pick_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
                    dot += tl.sum(a * p[None, :], axis=1)
                row_inv = tl.load(VINV_ptr + v_start + rows, mask=ok, other=0.0)
                rho = dot * row_inv * pick_inv
            lse = tl.load(SELF_LSE_ptr + v_start + rows, mask=ok, other=0.0)
            log_cond = rho - lse  # log p(v_pick | v_i), Eq. (16)
            pmi = log_cond + log_n  # Eq. (18), column `pick`
            running = tl.load(RUN_ptr + v_start + rows, mask=ok, other=float("inf"))
            # Eq. (20) or Eq. (21); a picked row stays +inf either way (inf + finite = inf).
            running = tl.where(use_mean, running + tl.exp(log_cond) * pmi, tl.maximum(running, pmi))
            running = tl.where(rows == pick, float("inf"), running)
            tl.store(RUN_ptr + v_start + rows, running, mask=ok)
            cross = tl.load(SCORE_ptr + v_start + rows, mask=ok, other=0.0)
            score = lam * cross - (1.0 - lam) * running  # Eq. (22); -inf once picked
            score = tl.where(ok, score, float("-inf"))
            c_best = tl.max(score, axis=0)
            c_arg = r0 + tl.argmax(score, axis=0, tie_break_left=True)
            nxt = tl.where(c_best > best, c_arg, nxt)
            best = tl.maximum(best, c_best)
        # The next step re-reads RUN rows that other threads of this program wrote.
        tl.debug_barrier()
        pick = nxt
    tl.store(RUN_ptr + v_start + pick, float("inf"))
    tl.debug_barrier()

    written = n_v * 0
    for r0 in range(0, n_v, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        ok = rows < n_v
        running = tl.load(RUN_ptr + v_start + rows, mask=ok, other=0.0)
        keep = (ok & (running == float("inf"))).to(tl.int32)
        pos = written + tl.cumsum(keep, axis=0) - keep
        tl.store(OUT_ptr + out_start + pos, rows, mask=keep > 0)
        written += tl.sum(keep, axis=0)


#: This module's Triton kernels by name (the AOT check and the warm-up's compile count).
KERNELS = {"mi_self_lse": _mi_self_lse_kernel, "mi_greedy": _mi_greedy_kernel}


def greedy_packed(
    packed: PackedItems,
    scores: torch.Tensor,
    v_inv: torch.Tensor,
    n_keep: list[int],
    tau: torch.Tensor,
    mi_lambda: torch.Tensor,
    aggregation: torch.Tensor,
    which: list[int],
    gram_cache_bytes: int | None = None,
) -> list[torch.Tensor]:
    """Greedy selection for the items ``which`` of ``packed`` (two launches in all).

    The rho_self matrices of the items are cached for the steps when their total size fits
    ``gram_cache_bytes`` (default :data:`GRAM_CACHE_BYTES`); otherwise every step does a GEMV.

    ``scores`` / ``v_inv`` come from :func:`~mipruner_vllm.kernels.mi_select.cross_scores_packed`;
    ``tau`` and ``mi_lambda`` are ``(B,)`` float32 device tensors, ``aggregation`` ``(B,)`` int32.
    """
    if not which:
        return []
    device = scores.device
    visual = packed.visual
    lengths = tuple(packed.n_visual[b] if b in set(which) else 0 for b in range(packed.size))
    items, blocks = block_table(lengths, BLOCK_V, device)
    self_lse = torch.empty(sum(packed.n_visual), dtype=torch.float32, device=device)
    budget = GRAM_CACHE_BYTES if gram_cache_bytes is None else gram_cache_bytes
    gram_sizes = [n * n for n in lengths]
    use_gram = 4 * sum(gram_sizes) <= budget and max(gram_sizes) < 2**31
    gram_off = [0]
    for size in gram_sizes:
        gram_off.append(gram_off[-1] + (size if use_gram else 0))
    gram = torch.empty(max(gram_off[-1], 1), dtype=torch.float32, device=device)
    gram_off_t = host_tensor(gram_off, torch.int64, device)
    _mi_self_lse_kernel[(len(items),)](
        visual, v_inv, items, blocks, packed.v_off, tau, self_lse, gram, gram_off_t,
        packed.dim, visual.stride(0),
        BLOCK_V=BLOCK_V, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D,
        FP32_INPUT=visual.dtype == torch.float32, UPCAST_DOT=upcast_dot(visual.dtype),
        STORE_GRAM=use_gram, num_warps=DOT_NUM_WARPS,
    )  # fmt: skip
    keep = [n_keep[b] if b in set(which) else 0 for b in range(packed.size)]
    out_off = [0]
    for n in keep:
        out_off.append(out_off[-1] + n)
    out = torch.empty(out_off[-1], dtype=torch.int64, device=device)
    running = torch.empty(
        sum(packed.n_visual), dtype=torch.float32, device=device
    )  # kernel-initialised
    _mi_greedy_kernel[(len(which),)](
        visual, v_inv, scores, self_lse, running,
        host_tensor(which, torch.int32, device), packed.v_off,
        host_tensor(keep, torch.int32, device), mi_lambda, tau, aggregation, gram, gram_off_t,
        host_tensor(out_off, torch.int64, device), out,
        packed.dim, visual.stride(0),
        BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_DG, USE_GRAM=use_gram, num_warps=GREEDY_NUM_WARPS,
    )  # fmt: skip
    return [out[out_off[b] : out_off[b + 1]] for b in which]
