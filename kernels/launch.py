# SPDX-License-Identifier: Apache-2.0
"""The one launcher of the MI-Pruner kernels: a packed varlen batch in, kept indices out.

Production (:mod:`mipruner_vllm.pruning.dispatch`), the kernel tests and the benchmark all call
:func:`mi_prune`, so what is tested and measured is exactly what serves requests; its
:func:`warm_up` compiles every variant it can pick. It is a pure op on tensors: per-item
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
#: Every Triton kernel of the package by name: the public registry (AOT check, warm-up count).
KERNELS = {**mi_select.KERNELS, **mi_greedy.KERNELS}


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
    """MI-Pruner for every item: packed once, then at most six launches for the whole batch.

    Every item needs ``N_V >= 1`` and ``N_T >= 1`` tokens of one hidden size; items of mixed
    dtypes are packed in float32 (:func:`~mipruner_vllm.kernels._runtime.pack_items`).
    ``mi_lambda`` defaults to 1 (one-pass top-k) and ``aggregation`` to ``"max"`` for every item.
    ``gram_cache_bytes`` bounds the greedy search's rho_self cache
    (:data:`~mipruner_vllm.kernels.mi_greedy.GRAM_CACHE_BYTES` by default; 0 forces a GEMV per
    step). The result equals the torch oracle item by item, up to fp32 rounding on near-ties.
    """
    packed = pack_items(list(visuals), list(texts))
    size = packed.size
    lambdas = [1.0] * size if mi_lambda is None else [float(x) for x in mi_lambda]
    aggs = ["max"] * size if aggregation is None else list(aggregation)
    taus = [float(x) for x in tau]
    check_arguments(packed, n_keep, taus, lambdas, aggs)
    return _launch(packed, list(n_keep), taus, lambdas, aggs, gram_cache_bytes)


def _launch(
    packed: PackedItems,
    keep: list[int],
    taus: list[float],
    lambdas: list[float],
    aggs: list[str],
    gram_cache_bytes: int | None,
) -> KernelOutput:
    """Phases 1-3 for every item, then top-k for lambda = 1 and the greedy search for < 1."""
    device = packed.visual.device
    tau_t = host_tensor(taus, torch.float32, device)
    agg_t = host_tensor([mi_select.AGGREGATION_CODES[a] for a in aggs], torch.int32, device)
    scores, v_inv = mi_select.cross_scores_packed(packed, tau_t, agg_t)
    one_pass = [b for b in range(packed.size) if lambdas[b] >= 1.0]
    greedy = [b for b in range(packed.size) if lambdas[b] < 1.0]
    picked = dict(zip(one_pass, mi_select.topk_packed(scores, packed, keep, one_pass), strict=True))
    if greedy:
        lam_t = host_tensor(lambdas, torch.float32, device)
        found = mi_greedy.greedy_packed(
            packed, scores, v_inv, keep, tau_t, lam_t, agg_t, greedy, gram_cache_bytes
        )
        picked.update(zip(greedy, found, strict=True))
    offsets = [0]
    for n in packed.n_visual:
        offsets.append(offsets[-1] + n)
    return KernelOutput(
        indices=[picked[b] for b in range(packed.size)],  # every item is one-pass or greedy
        scores=[scores[offsets[b] : offsets[b + 1]] for b in range(packed.size)],
    )


# -- warm-up: compile every variant when a model loads, not inside the first request's step ----


def compiled_specialisations() -> int | None:
    """Compiled specialisations of :data:`KERNELS` in this process (Triton's JIT caches); None
    where this Triton does not expose them."""
    total = 0
    for kernel in KERNELS.values():
        caches = getattr(kernel, "device_caches", None)
        if caches is None:
            return None
        total += sum(len(entry[0]) for entry in caches.values())
    return total


def warm_up(device: torch.device, dtype: torch.dtype, hidden: int) -> int | None:
    """Launch every kernel variant :func:`mi_prune` can pick for ``(device, dtype, hidden)``.

    Triton compiles a kernel on its first launch with new constexprs; this launches tiny inputs
    with the shortest query of every text tile (:func:`~mipruner_vllm.kernels.mi_select.
    shortest_query_per_text_block`, so the tiles come from the launcher's own rule), lambda = 1
    and < 1, both aggregations and both greedy step paths (cached rho_self and GEMV). Returns
    how many specialisations that compiled (None where Triton does not expose it).
    """
    before = compiled_specialisations()
    g = torch.Generator(device="cpu").manual_seed(0)
    visuals = [torch.randn(n, hidden, generator=g).to(device, dtype) for n in (8, 5)]
    for n_text in mi_select.shortest_query_per_text_block().values():
        texts = [torch.randn(n_text, hidden, generator=g).to(device, dtype) for _ in visuals]
        for gram_cache_bytes in (None, 0):
            mi_prune(visuals, texts, [2, 2], [0.1, 0.1], [1.0, 0.5], ["max", "mean"],
                     gram_cache_bytes=gram_cache_bytes)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    after = compiled_specialisations()
    return None if before is None or after is None else after - before
