# SPDX-License-Identifier: Apache-2.0
"""An independent float64 transcription of the MI-Pruner paper's Algorithm 1, for the tests only.

Written from the paper, not from ``mipruner_vllm.pruning.reference``: full N x N matrices, the
greedy loop recomputing S_self from scratch at every step, no streaming statistics. Slow and
memory-hungry on purpose; it exists to disagree with the package if the package is wrong.
"""

from __future__ import annotations

import math

import torch


def unit64(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))


def conditional64(rho: torch.Tensor, normalization: str) -> torch.Tensor:
    """p(x_j | v_i): Eq. (16) softmax or Eqs. (52)-(53) minmax (uniform rows when max == min)."""
    if normalization == "softmax":
        e = torch.exp(rho - rho.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)
    p = torch.empty_like(rho)
    for i in range(rho.shape[0]):
        lo, hi = rho[i].min(), rho[i].max()
        if hi - lo <= 0:
            p[i] = 1.0 / rho.shape[1]
        else:
            scaled = (rho[i] - lo) / (hi - lo)
            p[i] = scaled / scaled.sum()
    return p


def pmi_cross64(V: torch.Tensor, T: torch.Tensor, tau: float, normalization: str = "softmax"):
    rho = unit64(V) @ unit64(T).T / tau  # Eq. (15)
    p_cond = conditional64(rho, normalization)  # Eq. (16)
    p_t = p_cond.mean(dim=0, keepdim=True)  # Eq. (17)
    with torch.no_grad():
        pmi = torch.log(p_cond) - torch.log(p_t)  # Eq. (18)
    pmi = torch.where(p_cond > 0, pmi, torch.tensor(float("-inf"), dtype=torch.float64))
    return p_cond, pmi


def pmi_self64(V: torch.Tensor, tau: float, normalization: str = "softmax"):
    rho = unit64(V) @ unit64(V).T / tau  # Eq. (15)
    p_cond = conditional64(rho, normalization)  # Eq. (16)
    pmi = torch.log(p_cond) + math.log(V.shape[0])  # Eq. (18) with p(v_j) = 1 / N_V
    pmi = torch.where(p_cond > 0, pmi, torch.tensor(float("-inf"), dtype=torch.float64))
    return p_cond, pmi


def aggregate64(p: torch.Tensor, pmi: torch.Tensor, aggregation: str) -> torch.Tensor:
    if aggregation == "max":
        return pmi.max(dim=1).values  # Eqs. (19)-(20)
    return torch.where(p > 0, p * pmi, torch.zeros_like(p)).sum(dim=1)  # Eq. (21)


def algorithm1(
    V: torch.Tensor,
    T: torch.Tensor,
    k: int,
    mi_lambda: float,
    tau: float,
    aggregation: str = "max",
    normalization: str = "softmax",
) -> list[int]:
    """Algorithm 1, lines 3-21, literally: the selected set grows by the argmax of Eq. (22)."""
    p_cross, pmi_cross = pmi_cross64(V, T, tau, normalization)
    s_cross = aggregate64(p_cross, pmi_cross, aggregation)
    p_self, pmi_self = pmi_self64(V, tau, normalization)
    selected: list[int] = []
    while len(selected) < k:
        best, best_score = -1, -math.inf
        for i in range(V.shape[0]):
            if i in selected:
                continue
            if selected:
                cols = torch.tensor(selected)
                s_self = float(
                    aggregate64(p_self[i : i + 1, cols], pmi_self[i : i + 1, cols], aggregation)[0]
                )
            else:
                s_self = 0.0  # Eq. (20) over the empty set
            score = mi_lambda * float(s_cross[i])
            if mi_lambda < 1.0:
                score -= (1.0 - mi_lambda) * s_self
            if score > best_score:  # strict: the lower index keeps a tie
                best, best_score = i, score
        selected.append(best)
    return sorted(selected)
