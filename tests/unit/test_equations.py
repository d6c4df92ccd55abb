# SPDX-License-Identifier: Apache-2.0
"""Equations (15)-(24) and the ablations (21), (52)-(53) on inputs small enough to do by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mipruner_vllm.pruning import reference

pytestmark = pytest.mark.unit

# Three visual tokens and two text tokens in the plane:
#   v1 = (1, 0), v2 = (0, 1), v3 = (1, 1)/sqrt(2);  t1 = (1, 0), t2 = (0, 1);  tau = 1.
V = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # norms differ: Eq. (15) normalises
T = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
A = 1 / math.sqrt(2)
SIG = math.e / (1 + math.e)  # softmax([1, 0])[0]


def test_eq15_cross_logits_are_cosines_over_tau():
    logits = reference.normalize_rows(V) @ reference.normalize_rows(T).T / 0.5
    expected = torch.tensor([[1, 0], [0, 1], [A, A]]) / 0.5
    torch.testing.assert_close(logits, expected)


def test_eq16_eq17_eq18_cross_pmi_by_hand():
    log_cond, pmi = reference.cross_modal_pmi(V, T, tau=1.0)
    p = log_cond.exp()
    # Eq. (16): rows are softmaxes of [1, 0], [0, 1], [a, a].
    torch.testing.assert_close(p, torch.tensor([[SIG, 1 - SIG], [1 - SIG, SIG], [0.5, 0.5]]))
    # Eq. (17): p(t1) = (sig + (1 - sig) + 0.5) / 3 = 0.5, likewise p(t2) = 0.5.
    # Eq. (18): PMI = log(p(t|v) / 0.5).
    expected = torch.tensor(
        [
            [math.log(2 * SIG), math.log(2 * (1 - SIG))],
            [math.log(2 * (1 - SIG)), math.log(2 * SIG)],
            [0.0, 0.0],
        ]
    )
    torch.testing.assert_close(pmi, expected)


def test_eq19_max_and_eq21_mean_aggregation():
    s_max = reference.cross_modal_scores(V, T, tau=1.0, aggregation="max")
    torch.testing.assert_close(s_max, torch.tensor([math.log(2 * SIG), math.log(2 * SIG), 0.0]))
    s_mean = reference.cross_modal_scores(V, T, tau=1.0, aggregation="mean")
    kl = SIG * math.log(2 * SIG) + (1 - SIG) * math.log(2 * (1 - SIG))
    torch.testing.assert_close(s_mean, torch.tensor([kl, kl, 0.0]))


def test_eq52_eq53_minmax_normalization():
    logits = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    p = reference.conditional_log_probs(logits, "minmax").exp()
    # Row 1: (rho - 0) / (1 - 0) = [1, 0, 0.5], normalised by 1.5. Row 2: max == min -> uniform.
    torch.testing.assert_close(p, torch.tensor([[1 / 1.5, 0.0, 0.5 / 1.5], [1 / 3, 1 / 3, 1 / 3]]))


def test_eq18_self_pmi_column_by_hand():
    self_pmi = reference.SelfPMI(V, tau=1.0)
    log_cond, pmi = self_pmi.column(0)
    # rho_self rows: v1 [1, 0, a], v2 [0, 1, a], v3 [a, a, 1]; column 0 = p(v1 | v_i).
    rows = [[1.0, 0.0, A], [0.0, 1.0, A], [A, A, 1.0]]
    expected = [r[0] - math.log(sum(math.exp(x) for x in r)) + math.log(3) for r in rows]
    torch.testing.assert_close(pmi, torch.tensor(expected))
    torch.testing.assert_close(log_cond, torch.tensor(expected) - math.log(3))


def test_eq18_self_pmi_minmax_column_by_hand():
    self_pmi = reference.SelfPMI(V, tau=1.0, normalization="minmax")
    _, pmi = self_pmi.column(2)
    # Row v1: rho [1, 0, a] -> p = [1, 0, a] / (1 + a); p(v3 | v1) = a / (1 + a).
    # Row v3: rho [a, a, 1] -> scaled [0, 0, 1] -> p(v3 | v3) = 1.
    assert pmi[0].item() == pytest.approx(math.log(A / (1 + A)) + math.log(3), rel=1e-5)
    assert pmi[2].item() == pytest.approx(math.log(3), rel=1e-5)


def test_eq20_eq22_eq24_greedy_steps_by_hand():
    # lambda = 0.5, k = 2. Step 1: S_self = 0, scores 0.5 * S_cross = [c, c, 0]/2 -> v1
    # (tie: lower).
    # Step 2: S_self_i = PMI(v_i; v1); score_i = 0.5 c_i - 0.5 S_self_i.
    c = math.log(2 * SIG)
    s_self_v2 = 0.0 - math.log(1 + math.e + math.exp(A)) + math.log(3)
    s_self_v3 = A - math.log(2 * math.exp(A) + math.e) + math.log(3)
    score_v2 = 0.5 * c - 0.5 * s_self_v2
    score_v3 = 0.5 * 0.0 - 0.5 * s_self_v3
    assert score_v2 > score_v3
    cross = reference.cross_modal_scores(V, T, tau=1.0)
    kept = reference.mi_greedy(V, cross, k=2, mi_lambda=0.5, tau=1.0)
    assert kept.tolist() == [0, 1]
    # lambda = 0 (redundancy only) after v1: the lowest PMI to v1 wins, i.e. v2 again.
    assert reference.mi_greedy(V, cross, k=2, mi_lambda=0.0, tau=1.0).tolist() == [0, 1]


def test_greedy_redundancy_term_changes_the_selection():
    # Eight clusters of four near-duplicate tokens. The one-pass top-k (lambda = 1) takes whole
    # clusters; with lambda = 0.5 the intra-modal PMI term (Eq. 22) spreads the budget so that
    # every kept token comes from a different cluster.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=g)
    v = centres.repeat_interleave(4, dim=0) + 0.05 * torch.randn(32, 16, generator=g)
    t = torch.randn(4, 16, generator=g)
    top_k = reference.select_mi(v, t, 8, mi_lambda=1.0, tau=0.1)
    greedy = reference.select_mi(v, t, 8, mi_lambda=0.5, tau=0.1)
    assert len(set((top_k // 4).tolist())) <= 3
    assert len(set((greedy // 4).tolist())) == 8


def test_trimtokenator_stage1_l2_alignment():
    v = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    # alpha_i = -(1/2) sum_j ||v_i - t_j||^2
    expected = torch.tensor([-(1 + 5) / 2, -(0 + 4) / 2, -(4 + 8) / 2, -(1 + 1) / 2])
    torch.testing.assert_close(reference.l2_alignment_scores(v, t), expected)
    assert reference.select_trimtokenator(v, t, k=2, stage1_keep=2).tolist() == [1, 3]


def test_trimtokenator_stage2_greedy_repmax():
    # Mean cosine to all candidates: a 2/3, b 2/3, c 1/3 -> start at c; then a and b tie at 0
    # similarity to {c} -> a (lower position).
    candidates = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert reference.greedy_repmax(candidates, 2).tolist() == [0, 2]
    assert reference.greedy_repmax(candidates, 1).tolist() == [2]
    # Whole method: stage 1 keeps the 3 tokens nearest to t, stage 2 the 2 most diverse of them.
    v = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [50.0, 50.0]])
    t = torch.tensor([[0.5, 0.5]])
    assert reference.select_trimtokenator(v, t, k=2, stage1_keep=3).tolist() == [0, 2]


def test_divprune_farthest_point():
    # Four points on a circle at 0, 10, 90 and 180 degrees: the first pick is the one whose
    # nearest neighbour is farthest (180 deg, nearest at 90); then the farthest from it (0 deg).
    angles = torch.tensor([0.0, 10.0, 90.0, 180.0]) * math.pi / 180
    v = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert reference.select_divprune(v, 1).tolist() == [3]
    assert reference.select_divprune(v, 2).tolist() == [0, 3]
    assert reference.select_divprune(v, 3).tolist() == [0, 2, 3]


def test_similarity_baseline():
    assert reference.select_similarity(V, T, 1).tolist() == [0]  # cos 1 with t1, tie v2: lower
    assert reference.select_similarity(V, T, 2).tolist() == [0, 1]


def test_uniform_stride_centres():
    assert reference.uniform_stride(10, 2).tolist() == [2, 7]
    assert reference.uniform_stride(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert reference.uniform_stride(7, 1).tolist() == [3]
