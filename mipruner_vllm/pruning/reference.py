# SPDX-License-Identifier: Apache-2.0
"""Pure-torch selection algorithms: MI-Pruner (arXiv 2604.03072), TrimTokenator (arXiv
2509.00320) and the baselines (similarity, random, DivPrune).

This module is three things at once: the oracle the Triton kernels are tested against, the CPU
path used in production when there is no GPU, and the baseline of the selection benchmark. It
imports only torch.

Conventions shared by every function here (the output contract of every method):

* math in float32 whatever the input dtype (inputs are cast once, on their own device);
* ``x~ = x / max(||x||, 1e-12)``: a zero vector stays zero, so it has cosine 0 with every token
  (its logits are all 0, i.e. it is indifferent to every text token);
* kept indices are returned as an int64 tensor in ascending original order, exactly ``k`` long;
* ties are broken toward the lower index (stable sorts, first-occurrence argmax/argmin);
* with no query text (``N_T = 0``) every text-conditioned method (mi, similarity, trimtokenator)
  keeps a uniform stride of the item (:func:`uniform_stride`), so the budget is still honoured
  and the whole image stays covered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Rows of the N_V x N_V self-similarity handled at once: bounds the oracle's memory to
# _ROW_CHUNK * N_V floats for videos of 16k tokens instead of N_V^2.
_ROW_CHUNK = 2048
_NORM_EPS = 1e-12


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x~ = x / ||x||`` in float32 (Algorithm 1, line 4); zero rows stay zero."""
    return F.normalize(x.float(), dim=-1, eps=_NORM_EPS)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest scores, ties toward the lower index, returned in ascending index order."""
    # A stable descending sort keeps equal scores in index order, so the lower index wins a tie;
    # torch.topk gives no such guarantee.
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def uniform_stride(n_visual: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``k`` evenly spaced indices: the centre of each of ``k`` equal bins (the N_T = 0 rule)."""
    i = torch.arange(k, device=device, dtype=torch.int64)
    return ((2 * i + 1) * n_visual) // (2 * k)


# ---------------------------------------------------------------------------------------------
# Distributions and PMI (Eqs. 15-18, 52-53)
# ---------------------------------------------------------------------------------------------


def conditional_log_probs(logits: torch.Tensor, normalization: str = "softmax") -> torch.Tensor:
    """``log p(x_j | v_i)`` over the last dimension.

    ``softmax``: Eq. (16). ``minmax``: Eqs. (52)-(53), ``rho^ = (rho - min_j) / (max_j - min_j)``,
    ``p = rho^ / sum_k rho^``. A row whose logits are all equal (``max = min``, e.g. one text
    token) has no spread to normalise; it gets the uniform distribution, which is also the
    softmax of equal logits. The row minimum has ``p = 0`` and ``log p = -inf`` under minmax.
    """
    if normalization == "softmax":
        return torch.log_softmax(logits, dim=-1)
    if normalization == "minmax":
        lo = logits.amin(dim=-1, keepdim=True)
        span = logits.amax(dim=-1, keepdim=True) - lo
        flat = span <= 0
        scaled = torch.where(
            flat, torch.ones_like(logits), (logits - lo) / torch.where(flat, 1.0, span)
        )
        return torch.log(scaled) - torch.log(scaled.sum(dim=-1, keepdim=True))
    raise ValueError(f"normalization must be one of softmax, minmax, got {normalization!r}")


def cross_modal_pmi(
    visual: torch.Tensor, text: torch.Tensor, tau: float, normalization: str = "softmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(t_j | v_i), PMI(v_i; t_j))``, both ``(N_V, N_T)`` float32.

    Eq. (15) ``rho_cross = v~ t~^T / tau``; Eq. (16) row distribution; Eq. (17)
    ``p(t_j) = (1/N_V) sum_i p(t_j | v_i)`` computed as a column logsumexp; Eq. (18)
    ``PMI = log p(t_j | v_i) - log p(t_j)``. Where ``p(t_j | v_i) = 0`` (minmax) the PMI is
    ``-inf`` by definition (log 0), also when the whole column is 0.
    """
    logits = normalize_rows(visual) @ normalize_rows(text).T / tau
    log_cond = conditional_log_probs(logits, normalization)
    log_marginal = torch.logsumexp(log_cond, dim=0, keepdim=True) - math.log(visual.shape[0])
    pmi = torch.where(torch.isneginf(log_cond), float("-inf"), log_cond - log_marginal)
    return log_cond, pmi


def aggregate_pmi(
    log_cond: torch.Tensor, pmi: torch.Tensor, aggregation: str = "max"
) -> torch.Tensor:
    """Per-row score: ``max_j PMI`` (Eq. 19) or ``sum_j p(x_j|v_i) PMI(v_i;x_j)`` (Eq. 21).

    In the mean form a term with ``p = 0`` contributes 0 (the ``0 log 0 = 0`` convention).
    """
    if aggregation == "max":
        return pmi.amax(dim=-1)
    if aggregation == "mean":
        p = log_cond.exp()
        return torch.where(p > 0, p * pmi, 0.0).sum(dim=-1)
    raise ValueError(f"aggregation must be one of max, mean, got {aggregation!r}")


def cross_modal_scores(
    visual: torch.Tensor,
    text: torch.Tensor,
    tau: float = 0.1,
    aggregation: str = "max",
    normalization: str = "softmax",
) -> torch.Tensor:
    """``S_cross`` of every visual token, ``(N_V,)`` float32 (Eqs. 15-19, or 21 for ``mean``)."""
    log_cond, pmi = cross_modal_pmi(visual, text, tau, normalization)
    return aggregate_pmi(log_cond, pmi, aggregation)


class SelfPMI:
    """Columns of the intra-modal PMI ``PMI(v_i; v_j) = log p(v_j | v_i) + log N_V`` (Eq. 18).

    The greedy search only needs the column of the token it just picked, so this keeps O(N_V)
    row statistics instead of the N_V x N_V matrix: for softmax the row logsumexp of
    ``rho_self = v~ v~^T / tau`` (Eq. 15-16); for minmax the row min, max and sum (Eqs. 52-53).
    """

    def __init__(self, visual: torch.Tensor, tau: float, normalization: str = "softmax") -> None:
        if normalization not in ("softmax", "minmax"):
            raise ValueError(f"normalization must be one of softmax, minmax, got {normalization!r}")
        self.unit = normalize_rows(visual)
        self.tau = tau
        self.normalization = normalization
        self.log_n = math.log(visual.shape[0])
        n = visual.shape[0]
        stats = []
        for start in range(0, n, _ROW_CHUNK):
            rho = self.unit[start : start + _ROW_CHUNK] @ self.unit.T / tau
            if normalization == "softmax":
                stats.append(torch.logsumexp(rho, dim=-1, keepdim=True))
            else:
                stats.append(torch.stack([rho.amin(-1), rho.amax(-1), rho.sum(-1)], dim=-1))
        self.row_stats = torch.cat(stats)

    def column(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(v_j | v_i), PMI(v_i; v_j))`` for every i, both ``(N_V,)``."""
        rho = self.unit @ self.unit[j] / self.tau
        if self.normalization == "softmax":
            log_cond = rho - self.row_stats[:, 0]
        else:
            lo, hi, total = self.row_stats.unbind(-1)
            n = self.unit.shape[0]
            span = hi - lo
            flat = span <= 0
            scaled = torch.where(flat, 1.0, (rho - lo) / torch.where(flat, 1.0, span))
            row_sum = torch.where(flat, float(n), (total - n * lo) / torch.where(flat, 1.0, span))
            log_cond = torch.log(scaled.clamp_min(0)) - torch.log(row_sum)
        pmi = torch.where(torch.isneginf(log_cond), float("-inf"), log_cond + self.log_n)
        return log_cond, pmi


# ---------------------------------------------------------------------------------------------
# Selection methods; each returns ascending int64 indices, exactly k long
# ---------------------------------------------------------------------------------------------


def mi_greedy(
    visual: torch.Tensor,
    cross_scores: torch.Tensor,
    k: int,
    mi_lambda: float,
    tau: float,
    aggregation: str = "max",
    normalization: str = "softmax",
) -> torch.Tensor:
    """Greedy MI-Pruner (Algorithm 1, lines 12-19) from precomputed ``S_cross``.

    Step by step, ``score_i = lambda S_cross_i - (1 - lambda) S_self_i`` (Eq. 22) over the
    unselected tokens, ``S_self`` being 0 while nothing is selected and then ``max_{j in S}``
    (Eq. 20) or ``sum_{j in S} p(v_j|v_i) PMI`` (Eq. 21) of the intra-modal PMI; the argmax is
    added (Eq. 24; first occurrence, i.e. the lower index, on ties). With ``lambda = 1`` the
    redundancy term has weight 0 and the result equals the one-pass top-k.
    """
    n = visual.shape[0]
    device = cross_scores.device
    selected = torch.zeros(n, dtype=torch.bool, device=device)
    picks = torch.empty(k, dtype=torch.int64, device=device)
    self_pmi = SelfPMI(visual, tau, normalization) if mi_lambda < 1.0 else None
    running = torch.full((n,), float("-inf") if aggregation == "max" else 0.0, device=device)
    for step in range(k):
        score = mi_lambda * cross_scores
        if self_pmi is not None and step > 0:
            score = score - (1.0 - mi_lambda) * running
        score = torch.where(selected, float("-inf"), score)
        # Among unselected tokens the score is never -inf (S_cross is finite, S_self <= log N_V),
        # so the masked ones cannot win; argmax returns the first maximum (lower index on ties).
        pick = int(torch.argmax(score))
        picks[step] = pick
        selected[pick] = True
        if self_pmi is not None:
            log_cond, pmi = self_pmi.column(pick)
            if aggregation == "max":
                running = torch.maximum(running, pmi)
            else:
                p = log_cond.exp()
                running = running + torch.where(p > 0, p * pmi, 0.0)
    return torch.sort(picks).values


def select_mi(
    visual: torch.Tensor,
    text: torch.Tensor,
    k: int,
    mi_lambda: float = 1.0,
    tau: float = 0.1,
    aggregation: str = "max",
    normalization: str = "softmax",
) -> torch.Tensor:
    """MI-Pruner: one-pass top-k of ``S_cross`` for ``lambda = 1``, else the greedy search."""
    if text.shape[0] == 0:
        return uniform_stride(visual.shape[0], k, visual.device)
    cross = cross_modal_scores(visual, text, tau, aggregation, normalization)
    if mi_lambda >= 1.0:
        return topk_indices(cross, k)
    return mi_greedy(visual, cross, k, mi_lambda, tau, aggregation, normalization)


def select_similarity(visual: torch.Tensor, text: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's "Similarity" baseline: top-k of ``max_j cos(v_i, t_j)``."""
    if text.shape[0] == 0:
        return uniform_stride(visual.shape[0], k, visual.device)
    cosine = normalize_rows(visual) @ normalize_rows(text).T
    return topk_indices(cosine.amax(dim=-1), k)


def select_random(
    n_visual: int, k: int, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Uniform without replacement; the generator runs on the CPU so every device agrees."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    picks = torch.randperm(n_visual, generator=generator)[:k]
    return torch.sort(picks).values.to(device)


def select_divprune(visual: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune: greedy max-min cosine distance (farthest-point sampling), text-agnostic.

    First pick: the token whose nearest other token is farthest (largest min distance to the
    rest); then repeatedly the unselected token farthest from its nearest selected token.
    Distance is ``1 - cos``.
    """
    unit = normalize_rows(visual)
    n = unit.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.int64, device=visual.device)
    nearest_other = torch.empty(n, device=unit.device)
    for start in range(0, n, _ROW_CHUNK):
        dist = 1.0 - unit[start : start + _ROW_CHUNK] @ unit.T
        rows = torch.arange(dist.shape[0], device=unit.device)
        dist[rows, rows + start] = float("inf")  # exclude the token itself
        nearest_other[start : start + dist.shape[0]] = dist.amin(dim=-1)
    selected = torch.zeros(n, dtype=torch.bool, device=unit.device)
    picks = torch.empty(k, dtype=torch.int64, device=unit.device)
    min_dist = nearest_other
    for step in range(k):
        score = torch.where(selected, float("-inf"), min_dist)
        pick = int(torch.argmax(score))
        picks[step] = pick
        selected[pick] = True
        dist_to_pick = 1.0 - unit @ unit[pick]
        min_dist = dist_to_pick if step == 0 else torch.minimum(min_dist, dist_to_pick)
    return torch.sort(picks).values


def l2_alignment_scores(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """TrimTokenator stage 1: ``alpha_i = -(1/N_T) sum_j ||v_i - t_j||^2`` on raw embeddings.

    Expanded as ``-(||v_i||^2 - 2 v_i . mean_j t_j + mean_j ||t_j||^2)`` so no
    N_V x N_T x d tensor is formed.
    """
    v = visual.float()
    t = text.float()
    return -((v * v).sum(-1) - 2.0 * (v @ t.mean(0)) + (t * t).sum(-1).mean())


def greedy_repmax(candidates: torch.Tensor, k: int) -> torch.Tensor:
    """TrimTokenator stage 2 (Greedy RepMax) over ``candidates`` ``(N_1, d)``; positions into it.

    Start from the candidate with the lowest mean cosine similarity to all ``N_1`` candidates,
    then repeatedly add the candidate with the lowest mean cosine similarity to the selected set
    (a running sum of similarity columns), until ``k``. Ties toward the lower position.
    """
    unit = normalize_rows(candidates)
    n = unit.shape[0]
    selected = torch.zeros(n, dtype=torch.bool, device=unit.device)
    picks = torch.empty(k, dtype=torch.int64, device=unit.device)
    score = unit @ unit.sum(0) / n  # mean similarity to every candidate
    running = torch.zeros(n, device=unit.device)
    for step in range(k):
        masked = torch.where(selected, float("inf"), score)
        pick = int(torch.argmin(masked))
        picks[step] = pick
        selected[pick] = True
        running = running + unit @ unit[pick]
        score = running / (step + 1)
    return torch.sort(picks).values


def select_trimtokenator(
    visual: torch.Tensor, text: torch.Tensor, k: int, stage1_keep: int
) -> torch.Tensor:
    """TrimTokenator: L2 alignment keeps ``max(stage1_keep, k)`` tokens, Greedy RepMax keeps
    ``k``."""
    n = visual.shape[0]
    if text.shape[0] == 0:
        return uniform_stride(n, k, visual.device)
    n_stage1 = min(n, max(stage1_keep, k))
    candidates = topk_indices(l2_alignment_scores(visual, text), n_stage1)
    if n_stage1 == k:
        return candidates
    return candidates[greedy_repmax(visual[candidates], k)]
