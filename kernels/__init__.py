# SPDX-License-Identifier: Apache-2.0
"""Triton selection kernels, installed as ``mipruner_vllm.kernels``.

* :mod:`~mipruner_vllm.kernels.mi_select`: fused MI-Pruner scores + top-k (lambda = 1).
* :mod:`~mipruner_vllm.kernels.mi_greedy`: greedy MI-Pruner (lambda < 1), all steps on device.
* ``python -m mipruner_vllm.kernels --aot sm_80,sm_90``: ahead-of-time compile check
  (:mod:`~mipruner_vllm.kernels.aot`), which needs no GPU.

:func:`triton_select_batch` is the entry :mod:`mipruner_vllm.pruning.backend` calls. It packs the
items the kernels cover into one varlen batch per (dtype, hidden size, device) and launches once
per phase for the whole batch; everything else runs on the torch reference with a one-time log
line. This module imports triton only inside :func:`triton_select_batch`, so the package and the
torch path work where triton is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mipruner_vllm.errors import KernelUnavailableError
from mipruner_vllm.kernels._runtime import host_tensor, interpret_enabled, triton_status

__all__ = ["interpret_enabled", "kernel_supports", "triton_select_batch", "triton_status"]


def kernel_supports(params) -> tuple[bool, str]:  # noqa: ANN001 - PruningParams, imported lazily
    """Whether the kernels implement ``params`` (else: why not)."""
    if params.method != "mi":
        return False, f"method={params.method!r} has no Triton kernel"
    if params.normalization != "softmax":
        return False, f"normalization={params.normalization!r} has no Triton kernel"
    return True, ""


def triton_select_batch(
    visuals: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    params: Sequence,
    *,
    forced: bool,
) -> list[torch.Tensor]:
    """Kept indices for every item (ascending int64, ``params[b].n_keep(N_V)`` long).

    Items are routed as follows; the result equals :func:`~mipruner_vllm.pruning.select.
    select_reference` item by item (up to fp32 rounding on near-ties):

    * budget keeps everything (or ``method="none"``): ``arange(N_V)``, no kernel;
    * ``method="mi"``, softmax, max or mean aggregation, ``N_T >= 1``: the kernels (lambda = 1 top-k,
      lambda < 1 greedy), all such items of one dtype/hidden size in one packed launch per phase;
    * ``N_T = 0``: the uniform-stride rule of the reference (index arithmetic only);
    * any other method or switch: the torch reference, announced once.

    When Triton cannot run at all (not installed, or neither CUDA nor ``TRITON_INTERPRET=1``) a
    forced call raises :class:`~mipruner_vllm.errors.KernelUnavailableError`, otherwise the
    whole batch falls back to torch.
    """
    from mipruner_vllm.pruning import reference
    from mipruner_vllm.pruning.backend import announce
    from mipruner_vllm.pruning.select import select_reference

    device = visuals[0].device if visuals else None
    usable, why = triton_status(device)
    if not usable:
        if forced:
            raise KernelUnavailableError(
                f"backend='triton' was requested but Triton cannot run: {why}. "
                "Use CUDA tensors, set TRITON_INTERPRET=1 (CPU interpreter, slow), or backend='torch'."
            )
        announce("torch", f"Triton unavailable: {why}")
        return [select_reference(v, t, p) for v, t, p in zip(visuals, texts, params, strict=True)]

    from mipruner_vllm.kernels.mi_greedy import greedy_packed
    from mipruner_vllm.kernels.mi_select import (
        AGGREGATION_CODES,
        cross_scores_packed,
        pack_items,
        topk_packed,
    )

    results: list[torch.Tensor | None] = [None] * len(visuals)
    groups: dict[tuple, list[int]] = {}
    for b, (v, t, p) in enumerate(zip(visuals, texts, params, strict=True)):
        n = v.shape[0]
        k = p.n_keep(n)
        if p.method == "none" or k == n:
            results[b] = torch.arange(n, dtype=torch.int64, device=v.device)
            continue
        supported, reason = kernel_supports(p)
        if not supported:
            announce("torch", f"fallback per item: {reason}")
            results[b] = select_reference(v, t, p)
        elif t.shape[0] == 0:
            results[b] = reference.uniform_stride(n, k, v.device)
        else:
            dtype = v.dtype if v.dtype == t.dtype else torch.float32
            groups.setdefault((dtype, v.shape[1], v.device), []).append(b)
    if groups:
        announce("triton", why)
    for members in groups.values():
        packed = pack_items([visuals[b] for b in members], [texts[b] for b in members])
        dev = packed.visual.device
        n_keep = [params[b].n_keep(visuals[b].shape[0]) for b in members]
        tau = host_tensor([float(params[b].mi_tau) for b in members], torch.float32, dev)
        lam = host_tensor([float(params[b].mi_lambda) for b in members], torch.float32, dev)
        agg = host_tensor(
            [AGGREGATION_CODES[params[b].aggregation] for b in members], torch.int32, dev
        )
        scores, v_inv = cross_scores_packed(packed, tau, agg)
        one_pass = [i for i, b in enumerate(members) if params[b].mi_lambda >= 1.0]
        greedy = [i for i, b in enumerate(members) if params[b].mi_lambda < 1.0]
        for i, idx in zip(one_pass, topk_packed(scores, packed, n_keep, one_pass), strict=True):
            results[members[i]] = idx
        for i, idx in zip(
            greedy, greedy_packed(packed, scores, v_inv, n_keep, tau, lam, agg, greedy), strict=True
        ):
            results[members[i]] = idx
    missing = [b for b, r in enumerate(results) if r is None]
    if missing:  # every branch above assigns; this guards future edits
        raise RuntimeError(f"items {missing} were not routed to any backend")
    return results  # type: ignore[return-value]
