# SPDX-License-Identifier: Apache-2.0
"""The per-token score a method ranks an item's visual tokens by (``pruning_detail_scores``).

Computed with the torch reference (:mod:`mipruner_vllm.pruning.reference`) on the same visual
and query embeddings the selection used, for the items of requests that ask for them only (the
Triton kernels do not output scores). What each method reports (docs/kept-patches.md):

* ``mi``: ``S_cross_i`` (Eq. 19 with ``max`` aggregation, Eq. 21 with ``mean``; the softmax of
  Eq. 16 or the minmax of Eqs. 52-53). With ``lambda = 1`` the kept set is its top-N_keep
  (Eq. 22). With ``lambda < 1`` the greedy search (Eqs. 22-24) has no single static score: its
  first pick is the argmax of ``lambda * S_cross``, later picks subtract the redundancy term,
  so this is the relevance term it starts from, not an order of the kept set;
* ``similarity``: ``max_j cos(v_i, t_j)``, whose top-N_keep is the kept set;
* ``trimtokenator``: stage 1's ``alpha_i = -(1/N_T) sum_j ||v_i - t_j||^2``, whose top N_1 are
  the candidates of stage 2 (Greedy RepMax, again no static score);
* ``random`` and ``divprune`` rank by nothing: no scores, and the reason why.

An item of several frames that selects frame by frame (Qwen3-VL video) is scored frame by frame,
like its selection, and its scores are the frames' in row order. Imports only torch.
"""

from __future__ import annotations

import dataclasses

import torch

from mipruner_vllm.params import PruningParams
from mipruner_vllm.pruning import reference

__all__ = ["SCORE_DIGITS", "TokenScores", "item_scores", "method_scores", "rounded"]

#: Significant digits of a reported score (JSON size: ~7 characters a token). Rounding is
#: monotonic, so a kept set that is the top-k of the scores stays the top-k of the rounded ones.
SCORE_DIGITS = 4

#: Methods whose selection ranks tokens by no per-token score, with the reason reported.
_UNSCORED = {
    "random": "random ranks by no score (a seeded uniform draw)",
    "divprune": "divprune ranks by no static score (greedy farthest-point selection)",
    "none": "method none keeps every token and scores none",
}

#: What the reported numbers are, per method (the response's ``score`` key).
_MEANING = {
    ("mi", "max"): "S_cross = max_j PMI(v_i; t_j) (Eq. 19)",
    ("mi", "mean"): "S_cross = sum_j p(t_j|v_i) PMI(v_i; t_j) (Eq. 21)",
    ("similarity", None): "max_j cos(v_i, t_j)",
    ("trimtokenator", None): "alpha_i = -(1/N_T) sum_j ||v_i - t_j||^2 (stage 1)",
}


@dataclasses.dataclass(frozen=True)
class TokenScores:
    """One item's scores (``values``, float32, row order) or why there are none (``reason``)."""

    values: torch.Tensor | None
    meaning: str | None = None
    reason: str | None = None


def _meaning(params: PruningParams) -> str:
    key = (params.method, params.aggregation if params.method == "mi" else None)
    text = _MEANING[key]
    if params.method == "mi" and params.mi_lambda < 1.0:
        text += ": the relevance term the greedy search starts from (lambda < 1)"
    return text


def method_scores(visual: torch.Tensor, text: torch.Tensor, params: PruningParams) -> torch.Tensor:
    """The ranking scores of one selection unit (an item, or one frame of it), ``(N_V,)``.

    Only for a scored method with query text (:func:`item_scores` says why otherwise).
    """
    if params.method == "mi":
        return reference.cross_modal_scores(
            visual, text, params.mi_tau, params.aggregation, params.normalization
        )
    if params.method == "similarity":
        return (reference.normalize_rows(visual) @ reference.normalize_rows(text).T).amax(-1)
    if params.method == "trimtokenator":
        return reference.l2_alignment_scores(visual, text)
    raise ValueError(f"method {params.method!r} has no ranking score")


def item_scores(
    frames: int, visual: torch.Tensor, text: torch.Tensor, params: PruningParams
) -> TokenScores:
    """The scores of one item's selectable rows ``visual`` ``(N_V, d)`` against its query
    ``text`` ``(N_T, d)``, frame by frame for an item of ``frames`` equal frames."""
    if params.method in _UNSCORED:
        return TokenScores(None, reason=_UNSCORED[params.method])
    if text.shape[0] == 0:
        return TokenScores(
            None, reason="no query text: the uniform-stride rule ran and nothing was scored"
        )
    units = visual.chunk(frames) if frames > 1 and visual.shape[0] % frames == 0 else (visual,)
    values = torch.cat([method_scores(unit, text, params) for unit in units])
    if not bool(torch.isfinite(values).all()):
        return TokenScores(None, reason="non_finite: some scores are NaN or infinite")
    return TokenScores(values, _meaning(params))


def rounded(values: torch.Tensor) -> list[float]:
    """``values`` as JSON-ready floats of :data:`SCORE_DIGITS` significant digits."""
    return [float(f"{x:.{SCORE_DIGITS}g}") for x in values.tolist()]
