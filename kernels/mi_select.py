# SPDX-License-Identifier: Apache-2.0
"""Fused MI-Pruner cross-modal scores and top-k (lambda = 1) over a packed varlen batch.

Per item b with visual tokens V_b (N_V x d) and query tokens T_b (N_T x d), MI-Pruner
(arXiv 2604.03072, Sec. 3.2) scores every visual token by

    rho_ij        = v~_i . t~_j / tau,  x~ = x / max(||x||, 1e-12)            (Eq. 15)
    log p(t_j|v_i) = rho_ij - logsumexp_j' rho_ij'                            (Eq. 16)
    log p(t_j)    = logsumexp_i log p(t_j|v_i) - log N_V                      (Eq. 17)
    PMI_ij        = log p(t_j|v_i) - log p(t_j)                               (Eq. 18)
    S_cross_i     = max_j PMI_ij                                              (Eq. 19)
                  or sum_j p(t_j|v_i) PMI_ij  (aggregation "mean")            (Eq. 21)

and, for lambda = 1, keeps the N_keep highest S_cross (Eq. 22 with lambda = 1). Only the
softmax normalisation (Eq. 16) is implemented; minmax (Eqs. 52-53) runs on the torch oracle.

Pass plan. The marginal p(t_j) of Eq. (17) is a reduction over *all* rows of an item, so the
row-local work and the column reduction cannot share one program without a grid-wide barrier
(which the interpreter, running programs one after another, could never pass). Instead every
phase is one launch over the whole batch, programs are mapped to (item, row block) through a
host-built block table as in varlen attention, and nothing waits on the host between phases:

1. ``_mi_cross_logits_kernel`` (one program per BLOCK_V rows of an item): streams V and T over d,
   accumulating V T^T with ``tl.dot`` and the squared norms alongside (no separate norm pass),
   scales to rho (Eq. 15), writes rho to an fp32 scratch of N_V x N_T per item, keeps the online
   row logsumexp (Eq. 16) and then, re-reading its own rows, writes per-block column partials
   (max, sum exp) of log p(t_j|v_i).
2. ``_mi_marginal_kernel`` (one program per item and BLOCK_T columns): merges the partials of all
   row blocks into log p(t_j) (Eq. 17). Deterministic: no float atomics, fixed merge order.
3. ``_mi_score_kernel`` (one program per row block): S_cross_i from PMI_ij (Eqs. 18-19, 21),
   max or mean chosen per item by a flag, so mixed requests share the launch.
4. ``_topk_kernel`` (one program per item): exact top-k by radix select on a sortable 32-bit key
   of the score, ties toward the lower index, indices written in ascending order.

Memory traffic: V is read once per text tile of up to 64 tokens (once for N_T <= 64, four times
for N_T = 256; the row block is re-read while hot, so mostly from L2), T once per row block (it
stays in L2), plus 2-3 N_V N_T fp32 of scratch traffic, small next to V for real queries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mipruner_vllm.kernels._runtime import PackedItems, block_table, host_tensor, upcast_dot
from mipruner_vllm.kernels.tiles import dot_tile, item_span, online_logsumexp, row_block

#: Rows of an item per program in the row-blocked phases.
BLOCK_V = 64
#: Hidden-dimension chunk of the V T^T product, and warps of the tl.dot kernels: with 8 warps
#: and 32-wide chunks the bf16/fp16 builds use no local memory on sm_80/sm_90 (AOT check; 4 warps
#: or 64-wide chunks spilled).
BLOCK_D = 32
DOT_NUM_WARPS = 8
#: Warps of the score kernel: it carries the max and the mean accumulators of a 64 x 64 tile, which
#: spilled at 4 warps (AOT check); at 8 it uses 48-179 registers.
SCORE_NUM_WARPS = 8
#: Per-item aggregation flag of the score kernels: max (Eqs. 19-20) or mean (Eq. 21).
AGGREGATION_CODES = {"max": 0, "mean": 1}

#: Scores per chunk in the top-k kernel.
BLOCK_N = 1024


#: Text columns per tile, smallest first (``tl.dot`` needs tiles of at least 16).
TEXT_BLOCKS = (16, 32, 64)


def text_block(max_n_text: int) -> int:
    """Text columns per tile: the smallest of :data:`TEXT_BLOCKS` covering the longest query;
    longer queries loop over the largest."""
    return next((block for block in TEXT_BLOCKS if max_n_text <= block), TEXT_BLOCKS[-1])


def shortest_query_per_text_block() -> dict[int, int]:
    """Each tile of :data:`TEXT_BLOCKS` -> the shortest query :func:`text_block` gives it, so a
    warm-up that launches these query lengths compiles every tile the launcher can pick."""
    shortest: dict[int, int] = {}
    for n_text in range(1, TEXT_BLOCKS[-1] + 1):
        shortest.setdefault(text_block(n_text), n_text)
    return shortest


@triton.jit
def _logits_tile(l_base, rows, row_ok, t0, n_t, BLOCK_T: tl.constexpr):
    """``(cols, col_ok, rho)``: columns ``t0 ..`` of the item's row-major N_V x N_T logits for
    ``rows``, -inf outside the item (what the softmax and max reductions ignore)."""
    cols = t0 + tl.arange(0, BLOCK_T)
    col_ok = cols < n_t
    rho = tl.load(
        l_base + rows[:, None] * n_t + cols[None, :],
        mask=row_ok[:, None] & col_ok[None, :],
        other=float("-inf"),
    )
    return cols, col_ok, rho


@triton.jit
def _mi_cross_logits_kernel(
    V_ptr,
    T_ptr,
    BLOCK_ITEM_ptr,
    BLOCK_ROW_ptr,
    V_OFF_ptr,
    T_OFF_ptr,
    L_OFF_ptr,
    P_OFF_ptr,
    TAU_ptr,
    L_ptr,
    ROW_LSE_ptr,
    VINV_ptr,
    COL_MAX_ptr,
    COL_SUM_ptr,
    dim,
    stride_v,
    stride_t,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP32_INPUT: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """Phase 1: rho = v~ t~^T / tau (Eq. 15), row logsumexp (Eq. 16), column partials (Eq. 17).

    V: (sum N_V, d), T: (sum N_T, d), any float dtype; math in fp32. Writes rho to L (item b at
    ``L_OFF[b]``, row-major N_V x N_T), the row logsumexp and 1/||v_i|| per visual token, and for
    its row block the column max and sum of exp(log p(t_j|v_i) - max) at
    ``P_OFF[b] + block * N_T + j``.
    """
    item, blk = row_block(BLOCK_ITEM_ptr, BLOCK_ROW_ptr)
    v_start, n_v = item_span(V_OFF_ptr, item)
    t_start, n_t = item_span(T_OFF_ptr, item)
    l_start = tl.load(L_OFF_ptr + item)
    p_start = tl.load(P_OFF_ptr + item) + blk * n_t
    inv_tau = 1.0 / tl.load(TAU_ptr + item)

    # Item bases are 64-bit scalars (the packed batch can exceed 2^31 elements); offsets inside
    # an item stay int32 (the launcher checks N_V * d < 2^31), because a 64-bit address per
    # tile element costs two registers each and made these kernels spill.
    v_base = V_ptr + v_start * stride_v
    t_base = T_ptr + t_start * stride_t
    l_base = L_ptr + l_start
    rows = blk.to(tl.int32) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n_v
    v_rows = v_base + rows[:, None] * stride_v
    m_i = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s_i = tl.zeros([BLOCK_V], tl.float32)
    v_inv = tl.zeros([BLOCK_V], tl.float32)
    for t0 in range(0, n_t, BLOCK_T):
        cols = t0 + tl.arange(0, BLOCK_T)
        col_ok = cols < n_t
        t_rows = t_base + cols[:, None] * stride_t
        acc = tl.zeros([BLOCK_V, BLOCK_T], tl.float32)
        v_sq = tl.zeros([BLOCK_V], tl.float32)
        t_sq = tl.zeros([BLOCK_T], tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            ks = d0 + tl.arange(0, BLOCK_D)
            k_ok = ks < dim
            v = tl.load(v_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            t = tl.load(t_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            acc = dot_tile(v, t, acc, FP32_INPUT, UPCAST_DOT)
            vf = v.to(tl.float32)
            tf = t.to(tl.float32)
            v_sq += tl.sum(vf * vf, axis=1)
            t_sq += tl.sum(tf * tf, axis=1)
        # Normalising after the product equals normalising first (Eq. 15); a zero row stays 0.
        v_inv = 1.0 / tl.maximum(tl.sqrt(v_sq), 1e-12)
        t_inv = 1.0 / tl.maximum(tl.sqrt(t_sq), 1e-12)
        rho = acc * v_inv[:, None] * (t_inv * inv_tau)[None, :]
        rho = tl.where(col_ok[None, :], rho, float("-inf"))
        tl.store(
            l_base + rows[:, None] * n_t + cols[None, :],
            rho,
            mask=row_ok[:, None] & col_ok[None, :],
        )
        # Online logsumexp across text tiles (flash-attention style rescaling).
        m_i, s_i = online_logsumexp(m_i, s_i, rho)
    lse = m_i + tl.log(s_i)
    tl.store(ROW_LSE_ptr + v_start + rows, lse, mask=row_ok)
    tl.store(VINV_ptr + v_start + rows, v_inv, mask=row_ok)
    # The rows written above are re-read by other threads of this program.
    tl.debug_barrier()
    for t0 in range(0, n_t, BLOCK_T):
        cols, col_ok, rho = _logits_tile(l_base, rows, row_ok, t0, n_t, BLOCK_T)
        log_cond = rho - lse[:, None]
        c_max = tl.max(log_cond, axis=0)
        # Masked columns have c_max = -inf; shift them by 0 instead so no NaN is formed.
        shift = tl.where(col_ok, c_max, 0.0)
        c_sum = tl.sum(tl.exp(log_cond - shift[None, :]), axis=0)
        tl.store(COL_MAX_ptr + p_start + cols, c_max, mask=col_ok)
        tl.store(COL_SUM_ptr + p_start + cols, c_sum, mask=col_ok)


@triton.jit
def _mi_marginal_kernel(
    COL_MAX_ptr,
    COL_SUM_ptr,
    V_OFF_ptr,
    T_OFF_ptr,
    P_OFF_ptr,
    LOG_MARGINAL_ptr,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Phase 2: log p(t_j) = logsumexp_i log p(t_j|v_i) - log N_V (Eq. 17), per item and column.

    Merges the (max, sum) partials of the item's row blocks in block order (deterministic).
    """
    item = tl.program_id(0).to(tl.int64)
    v_start, n_v = item_span(V_OFF_ptr, item)
    t_start, n_t = item_span(T_OFF_ptr, item)
    p_start = tl.load(P_OFF_ptr + item)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    col_ok = cols < n_t
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_T], tl.float32)
    n_blocks = tl.cdiv(n_v, BLOCK_V)
    for b in range(0, n_blocks):
        bm = tl.load(COL_MAX_ptr + p_start + b * n_t + cols, mask=col_ok, other=0.0)
        bs = tl.load(COL_SUM_ptr + p_start + b * n_t + cols, mask=col_ok, other=0.0)
        m_new = tl.maximum(m, bm)
        s = s * tl.exp(m - m_new) + bs * tl.exp(bm - m_new)
        m = m_new
    # Masked columns are never stored; give them s = 1 so no log(0) is evaluated.
    s = tl.where(col_ok, s, 1.0)
    log_marginal = m + tl.log(s) - tl.log(n_v.to(tl.float32))
    tl.store(LOG_MARGINAL_ptr + t_start + cols, log_marginal, mask=col_ok)


@triton.jit
def _mi_score_kernel(
    L_ptr,
    ROW_LSE_ptr,
    LOG_MARGINAL_ptr,
    BLOCK_ITEM_ptr,
    BLOCK_ROW_ptr,
    V_OFF_ptr,
    T_OFF_ptr,
    L_OFF_ptr,
    AGG_ptr,
    SCORE_ptr,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Phase 3: S_cross_i from PMI_ij = log p(t_j|v_i) - log p(t_j) (Eq. 18), per item either

    ``AGG = 0``: max_j PMI_ij (Eq. 19), or ``AGG = 1``: sum_j p(t_j|v_i) PMI_ij (Eq. 21). Both are
    accumulated in the same pass, so items with different aggregations share the launch.
    """
    item, blk = row_block(BLOCK_ITEM_ptr, BLOCK_ROW_ptr)
    v_start, n_v = item_span(V_OFF_ptr, item)
    t_start, n_t = item_span(T_OFF_ptr, item)
    l_base = L_ptr + tl.load(L_OFF_ptr + item)
    rows = blk.to(tl.int32) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n_v
    lse = tl.load(ROW_LSE_ptr + v_start + rows, mask=row_ok, other=0.0)
    use_mean = tl.load(AGG_ptr + item) == 1
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    expected = tl.zeros([BLOCK_V], tl.float32)
    for t0 in range(0, n_t, BLOCK_T):
        cols, col_ok, rho = _logits_tile(l_base, rows, row_ok, t0, n_t, BLOCK_T)
        log_marginal = tl.load(LOG_MARGINAL_ptr + t_start + cols, mask=col_ok, other=0.0)
        log_cond = rho - lse[:, None]
        pmi = log_cond - log_marginal[None, :]
        best = tl.maximum(best, tl.max(pmi, axis=1))
        # Masked entries would be 0 * -inf: zero their PMI first (the oracle's 0 log 0 = 0).
        valid = row_ok[:, None] & col_ok[None, :]
        expected += tl.sum(tl.exp(log_cond) * tl.where(valid, pmi, 0.0), axis=1)
    tl.store(SCORE_ptr + v_start + rows, tl.where(use_mean, expected, best), mask=row_ok)


@triton.jit
def _sortable_key(x):
    """Order-preserving map of fp32 to int64 in [0, 2^32): a > b  <=>  key(a) > key(b)."""
    # +0.0 turns -0.0 into +0.0, which torch's sort treats as equal (a tie, lower index wins).
    bits = (x + 0.0).to(tl.int32, bitcast=True).to(tl.int64)
    return tl.where(bits < 0, -1 - bits, bits + 2147483648)


@triton.jit
def _topk_kernel(
    SCORE_ptr,
    ITEMS_ptr,
    V_OFF_ptr,
    K_ptr,
    OUT_OFF_ptr,
    OUT_ptr,
    BLOCK_N: tl.constexpr,
):
    """Phase 4: the N_keep highest scores of an item, ties toward the lower index, ascending.

    Exact radix select: the k-th largest 32-bit key K is found bit by bit, most significant
    first (32 counting passes over the item's scores, no sort, no shared-memory buffer of N_V).
    Then every token with key > K is kept, plus the first (lowest-index) k - #{key > K} tokens
    with key == K, so a tie at the threshold goes to the lower index exactly as a stable
    descending sort would. A final pass in index order writes the kept indices ascending with a
    running prefix sum.
    """
    pid = tl.program_id(0)
    item = tl.load(ITEMS_ptr + pid).to(tl.int64)
    v_start, n_v = item_span(V_OFF_ptr, item)
    k = tl.load(K_ptr + item).to(tl.int64)
    out_start = tl.load(OUT_OFF_ptr + item)
    zero = v_start * 0  # int64 scalar: the keys span [0, 2^32)
    one = zero + 1
    prefix = zero
    for bit in range(31, -1, -1):
        cand = prefix | (one << bit)
        count = zero
        for n0 in range(0, n_v, BLOCK_N):
            idx = n0 + tl.arange(0, BLOCK_N)
            ok = idx < n_v
            key = _sortable_key(tl.load(SCORE_ptr + v_start + idx, mask=ok, other=0.0))
            count += tl.sum((ok & (key >= cand)).to(tl.int64), axis=0)
        prefix = tl.where(count >= k, cand, prefix)
    n_above = zero
    for n0 in range(0, n_v, BLOCK_N):
        idx = n0 + tl.arange(0, BLOCK_N)
        ok = idx < n_v
        key = _sortable_key(tl.load(SCORE_ptr + v_start + idx, mask=ok, other=0.0))
        n_above += tl.sum((ok & (key > prefix)).to(tl.int64), axis=0)
    n_ties = k - n_above
    written = zero
    ties_seen = zero
    for n0 in range(0, n_v, BLOCK_N):
        idx = n0 + tl.arange(0, BLOCK_N)
        ok = idx < n_v
        key = _sortable_key(tl.load(SCORE_ptr + v_start + idx, mask=ok, other=0.0))
        tie = (ok & (key == prefix)).to(tl.int64)
        tie_rank = ties_seen + tl.cumsum(tie, axis=0) - tie
        keep = ((ok & (key > prefix)) | ((tie > 0) & (tie_rank < n_ties))).to(tl.int64)
        pos = written + tl.cumsum(keep, axis=0) - keep
        tl.store(OUT_ptr + out_start + pos, idx, mask=keep > 0)
        written += tl.sum(keep, axis=0)
        ties_seen += tl.sum(tie, axis=0)


#: This module's Triton kernels by name (the AOT check and the warm-up's compile count).
KERNELS = {
    "mi_cross_logits": _mi_cross_logits_kernel,
    "mi_marginal": _mi_marginal_kernel,
    "mi_score": _mi_score_kernel,
    "topk": _topk_kernel,
}


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _int64(values: list[int], device: torch.device) -> torch.Tensor:
    return host_tensor(values, torch.int64, device)


def _cumulative(values: list[int]) -> list[int]:
    out = [0]
    for v in values:
        out.append(out[-1] + v)
    return out


def cross_scores_packed(
    packed: PackedItems, tau: torch.Tensor, aggregation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phases 1-3 for every item of ``packed``: ``(S_cross, 1/||v||)``, both ``(sum N_V,)`` fp32.

    ``tau``: ``(B,)`` float32, ``aggregation``: ``(B,)`` int32 (:data:`AGGREGATION_CODES`), on the
    pack's device. Three launches in all, whatever B is.
    """
    check_offsets(packed)
    device = packed.visual.device
    n_visual, n_text = packed.n_visual, packed.n_text
    block_t = text_block(max(n_text))
    n_blocks = [-(-n // BLOCK_V) for n in n_visual]
    l_off = _int64(_cumulative([nv * nt for nv, nt in zip(n_visual, n_text, strict=True)]), device)
    p_off = _int64(_cumulative([nb * nt for nb, nt in zip(n_blocks, n_text, strict=True)]), device)
    items, blocks = block_table(n_visual, BLOCK_V, device)
    total_v, total_t = sum(n_visual), sum(n_text)
    n_logits = sum(nv * nt for nv, nt in zip(n_visual, n_text, strict=True))
    logits = torch.empty(n_logits, dtype=torch.float32, device=device)
    n_partials = sum(nb * nt for nb, nt in zip(n_blocks, n_text, strict=True))
    col_max = torch.empty(n_partials, dtype=torch.float32, device=device)
    col_sum = torch.empty(n_partials, dtype=torch.float32, device=device)
    row_lse = torch.empty(total_v, dtype=torch.float32, device=device)
    v_inv = torch.empty(total_v, dtype=torch.float32, device=device)
    log_marginal = torch.empty(total_t, dtype=torch.float32, device=device)
    scores = torch.empty(total_v, dtype=torch.float32, device=device)
    visual, text = packed.visual, packed.text
    grid_rows = (len(items),)
    _mi_cross_logits_kernel[grid_rows](
        visual, text, items, blocks, packed.v_off, packed.t_off, l_off, p_off, tau,
        logits, row_lse, v_inv, col_max, col_sum,
        packed.dim, visual.stride(0), text.stride(0),
        BLOCK_V=BLOCK_V, BLOCK_T=block_t, BLOCK_D=BLOCK_D,
        FP32_INPUT=visual.dtype == torch.float32, UPCAST_DOT=upcast_dot(visual.dtype),
        num_warps=DOT_NUM_WARPS,
    )  # fmt: skip
    _mi_marginal_kernel[(packed.size, -(-max(n_text) // block_t))](
        col_max, col_sum, packed.v_off, packed.t_off, p_off, log_marginal,
        BLOCK_V=BLOCK_V, BLOCK_T=block_t, num_warps=1,
    )  # fmt: skip
    _mi_score_kernel[grid_rows](
        logits, row_lse, log_marginal, items, blocks, packed.v_off, packed.t_off, l_off,
        aggregation, scores,
        BLOCK_V=BLOCK_V, BLOCK_T=block_t, num_warps=SCORE_NUM_WARPS,
    )  # fmt: skip
    return scores, v_inv


def topk_packed(
    scores: torch.Tensor, packed: PackedItems, n_keep: list[int], which: list[int]
) -> list[torch.Tensor]:
    """Phase 4 for the items ``which`` of ``packed``: one launch, one index tensor per item."""
    device = scores.device
    keep = [0] * packed.size
    for b in which:
        keep[b] = n_keep[b]
    out_off = _cumulative(keep)
    out = torch.empty(out_off[-1], dtype=torch.int64, device=device)
    if which:
        _topk_kernel[(len(which),)](
            scores, host_tensor(which, torch.int32, device), packed.v_off,
            host_tensor(keep, torch.int32, device), _int64(out_off, device), out,
            BLOCK_N=BLOCK_N, num_warps=4,
        )  # fmt: skip
    return [out[out_off[b] : out_off[b + 1]] for b in which]


def check_budgets(packed: PackedItems, n_keep: list[int]) -> None:
    if len(n_keep) != packed.size:
        raise ValueError(f"got {packed.size} items but {len(n_keep)} budgets")
    for b, (k, n) in enumerate(zip(n_keep, packed.n_visual, strict=True)):
        if not 1 <= k <= n:
            raise ValueError(f"item {b}: n_keep must be in [1, {n}], got {k}")
    if min(packed.n_text) < 1:
        raise ValueError(
            "every packed item needs at least one text token (N_T = 0 is the caller's)"
        )
    check_offsets(packed)


def check_offsets(packed: PackedItems) -> None:
    """Offsets inside one item are int32 in the kernels (64-bit item bases): check they fit."""
    limit = 2**31
    for b, (nv, nt) in enumerate(zip(packed.n_visual, packed.n_text, strict=True)):
        if (
            nv * packed.visual.stride(0) >= limit
            or nt * packed.text.stride(0) >= limit
            or nv * nt >= limit
        ):
            raise ValueError(
                f"item {b} ({nv} visual x {nt} text tokens, hidden {packed.dim}) exceeds the "
                "kernels' int32 in-item offsets (N x d and N_V x N_T must stay below 2^31)"
            )
