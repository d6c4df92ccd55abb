# SPDX-License-Identifier: Apache-2.0
"""The one launcher of the MI-Pruner kernels: a packed varlen batch in, kept indices out.

Production (:mod:`mipruner_vllm.pruning.dispatch`), the kernel tests and the benchmark all call
:func:`mi_prune_packed` (or :func:`mi_prune`, which packs a list of items first), so what is
tested and measured is exactly what serves requests. It is a pure op on tensors: per-item
budgets, temperatures, lambdas and aggregations are plain numbers, it knows nothing of request
parameters, settings or backends.

Per launch, whatever the number of items B:

* phases 1-3 of :mod:`~mipruner_vllm.kernels.mi_select` (S_cross, Eqs. 15-19/21) for every item;
* phase 4 (top-k, lambda = 1) for the items with ``mi_lambda >= 1``, in one launch;
* the greedy search of :mod:`~mipruner_vllm.kernels.mi_greedy` (Eqs. 20-24) for the items with
  ``mi_lambda < 1``, in two launches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from mipruner_vllm.kernels import mi_greedy, mi_select
from mipruner_vllm.kernels._runtime import PackedItems, host_tensor, pack_items

#: Per-item aggregation names the kernels implement: max (Eqs. 19-20) or mean (Eq. 21).
AGGREGATIONS = tuple(mi_select.AGGREGATION_CODES)


class KernelOutput(NamedTuple):
    """What one launch returns, item by item (unpacks as ``indices, scores``)."""

    #: Kept indices of each item: int64, ascending, exactly ``n_keep[b]`` long.
    indices: list[torch.Tensor]
    #: S_cross of each item, float32 ``(N_V,)`` (views into one packed buffer).
    scores: list[torch.Tensor]


def check_arguments(
    packed: PackedItems,
    n_keep: Sequence[int],
    tau: Sequence[float],
    mi_lambda: Sequence[float],
    aggregation: Sequence[str],
) -> None:
    """Reject what the kernels cannot compute, naming the item (all host-side, no sync)."""
    size = packed.size
    for name, values in (("tau", tau), ("mi_lambda", mi_lambda), ("aggregation", aggregation)):
        if len(values) != size:
            raise ValueError(f"got {size} items but {len(values)} values of {name}")
    mi_select.check_budgets(packed, list(n_keep))
    for b, (t, lam, agg) in enumerate(zip(tau, mi_lambda, aggregation, strict=True)):
        if not t > 0.0:
            raise ValueError(f"item {b}: tau must be > 0, got {t}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"item {b}: mi_lambda must be in [0, 1], got {lam}")
        if agg not in mi_select.AGGREGATION_CODES:
            raise ValueError(f"item {b}: aggregation must be one of {AGGREGATIONS}, got {agg!r}")


def mi_prune_packed(
    packed: PackedItems,
    n_keep: Sequence[int],
    tau: Sequence[float],
    mi_lambda: Sequence[float] | None = None,
    aggregation: Sequence[str] | None = None,
    *,
    gram_cache_bytes: int | None = None,
) -> KernelOutput:
    """MI-Pruner for every item of ``packed``: at most six launches for the whole batch.

    ``mi_lambda`` defaults to 1 (one-pass top-k) and ``aggregation`` to ``"max"`` for every item.
    ``gram_cache_bytes`` bounds the greedy search's rho_self cache
    (:data:`~mipruner_vllm.kernels.mi_greedy.GRAM_CACHE_BYTES` by default; 0 forces a GEMV per
    step). The result equals the torch oracle item by item, up to fp32 rounding on near-ties.
    """
    size = packed.size
    lambdas = [1.0] * size if mi_lambda is None else [float(x) for x in mi_lambda]
    aggs = ["max"] * size if aggregation is None else list(aggregation)
    taus = [float(x) for x in tau]
    check_arguments(packed, n_keep, taus, lambdas, aggs)
    device = packed.visual.device
    tau_t = host_tensor(taus, torch.float32, device)
    agg_t = host_tensor([mi_select.AGGREGATION_CODES[a] for a in aggs], torch.int32, device)
    scores, v_inv = mi_select.cross_scores_packed(packed, tau_t, agg_t)
    one_pass = [b for b in range(size) if lambdas[b] >= 1.0]
    greedy = [b for b in range(size) if lambdas[b] < 1.0]
    indices: list[torch.Tensor | None] = [None] * size
    keep = list(n_keep)
    for b, idx in zip(one_pass, mi_select.topk_packed(scores, packed, keep, one_pass), strict=True):
        indices[b] = idx
    if greedy:
        lam_t = host_tensor(lambdas, torch.float32, device)
        picked = mi_greedy.greedy_packed(
            packed, scores, v_inv, keep, tau_t, lam_t, agg_t, greedy, gram_cache_bytes
        )
        for b, idx in zip(greedy, picked, strict=True):
            indices[b] = idx
    offsets = [0]
    for n in packed.n_visual:
        offsets.append(offsets[-1] + n)
    return KernelOutput(
        indices=indices,  # type: ignore[arg-type] - every item is in one_pass or greedy
        scores=[scores[offsets[b] : offsets[b + 1]] for b in range(size)],
    )


def mi_prune(
    visuals: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    n_keep: Sequence[int],
    tau: Sequence[float],
    mi_lambda: Sequence[float] | None = None,
    aggregation: Sequence[str] | None = None,
    *,
    gram_cache_bytes: int | None = None,
) -> KernelOutput:
    """:func:`mi_prune_packed` on items given as lists (packed first; see ``pack_items``).

    Every item needs ``N_V >= 1`` and ``N_T >= 1`` tokens of one hidden size; items of mixed
    dtypes are packed in float32.
    """
    return mi_prune_packed(
        pack_items(list(visuals), list(texts)),
        n_keep,
        tau,
        mi_lambda,
        aggregation,
        gram_cache_bytes=gram_cache_bytes,
    )
