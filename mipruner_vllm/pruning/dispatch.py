# SPDX-License-Identifier: Apache-2.0
"""The one selection dispatcher: which implementation selects each item, and what really ran.

:func:`dispatch` is the only place that chooses between the Triton kernels
(:func:`mipruner_vllm.kernels.launch.mi_prune`) and the torch reference
(:mod:`mipruner_vllm.pruning.reference`). It returns the kept indices *and* the backend that
produced each item (:class:`Selection`), so the metrics report what ran instead of guessing
from the input device.

Routing, for ``backend``:

* ``"torch"``: every item on the torch reference.
* ``"auto"``: the Triton path when every item is a CUDA tensor and Triton can run there, the torch
  reference otherwise (CPU tensors, Triton missing).
* ``"triton"``: the Triton path; :class:`~mipruner_vllm.errors.KernelUnavailableError` when Triton
  cannot run at all (not installed, or neither CUDA nor ``TRITON_INTERPRET=1``).

On the Triton path each item goes to the first rule that applies:

1. nothing to score: ``method="none"`` or a budget that keeps every token (``arange(N_V)``), or a
   text-conditioned method without query text (``N_T = 0``: the uniform-stride rule);
2. a method or switch with no kernel (anything but ``method="mi"`` with softmax normalisation):
   the torch reference, logged once per reason;
3. otherwise the kernels: all such items of one (dtype, hidden size, device) in one packed
   launch per phase, lambda = 1 and lambda < 1 items together.

Items of rule 1 need no scoring and are labelled ``"none"``, on either path. The result equals
the torch reference item by item (up to fp32 rounding on near-ties). This module imports triton only
inside the Triton path, so the torch path works where triton is missing; it imports nothing
from :mod:`mipruner_vllm.pruning.select`, which calls it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mipruner_vllm.config import BACKENDS
from mipruner_vllm.errors import KernelUnavailableError, PruningParameterError
from mipruner_vllm.kernels import interpret_enabled, triton_status
from mipruner_vllm.params import PruningParams, n_keep
from mipruner_vllm.pruning import reference

logger = logging.getLogger(__name__)

#: What produced one item's selection: the Triton kernels, the torch reference, or nothing
#: (every token kept, or no query text: the uniform-stride rule, no scores computed).
RanOn = Literal["triton", "torch", "none"]

_announced: set[tuple[str, str]] = set()


def announce(backend: str, reason: str) -> None:
    """Log which backend is active, once per (backend, reason) and process."""
    if (backend, reason) not in _announced:
        _announced.add((backend, reason))
        logger.info("mipruner selection backend: %s (%s)", backend, reason)


@dataclass(frozen=True)
class Selection:
    """The result of one batched selection, item by item."""

    #: Kept indices of each item: int64, ascending, ``params[b].n_keep(N_V)`` long.
    indices: list[torch.Tensor]
    #: What produced each item (:data:`RanOn`).
    backends: list[RanOn]

    @property
    def label(self) -> str:
        """One label for the whole batch (metrics): the scoring backend that ran, ``"mixed"``
        when both did, ``"none"`` when no item needed scoring."""
        ran = {b for b in self.backends if b != "none"}
        if not ran:
            return "none"
        return ran.pop() if len(ran) == 1 else "mixed"


def kernel_supports(params: PruningParams) -> tuple[bool, str]:
    """Whether the kernels implement ``params`` (else: why not)."""
    if params.method != "mi":
        return False, f"method={params.method!r} has no Triton kernel"
    if params.normalization != "softmax":
        return False, f"normalization={params.normalization!r} has no Triton kernel"
    return True, ""


def select_reference(
    visual: torch.Tensor, text: torch.Tensor, params: PruningParams
) -> torch.Tensor:
    """The torch path for one checked item: kept indices, ascending, ``params.n_keep(N_V)`` long."""
    n = visual.shape[0]
    k = params.n_keep(n)
    if params.method == "none" or k == n:
        return torch.arange(n, dtype=torch.int64, device=visual.device)
    if params.method == "mi":
        return reference.select_mi(
            visual, text, k, params.mi_lambda, params.mi_tau, params.aggregation,
            params.normalization,
        )  # fmt: skip
    if params.method == "similarity":
        return reference.select_similarity(visual, text, k)
    if params.method == "random":
        return reference.select_random(n, k, params.seed, visual.device)
    if params.method == "divprune":
        return reference.select_divprune(visual, k)
    if params.method == "trimtokenator":
        stage1 = n_keep(n, keep_ratio=params.trim_stage1_ratio)
        return reference.select_trimtokenator(visual, text, k, stage1)
    raise PruningParameterError("method", f"unknown method {params.method!r}")  # validated before


def _needs_no_scores(visual: torch.Tensor, text: torch.Tensor, params: PruningParams) -> bool:
    """Rules 1 and 3: every token kept, or a text-conditioned method without query text."""
    n = visual.shape[0]
    if params.method == "none" or params.n_keep(n) == n:
        return True
    return text.shape[0] == 0 and params.method in ("mi", "similarity", "trimtokenator")


#: One checked item: its visual and text embeddings and its resolved parameters.
Item = tuple[torch.Tensor, torch.Tensor, PruningParams]


def _torch_batch(items: Sequence[Item]) -> Selection:
    indices = [select_reference(v, t, p) for v, t, p in items]
    backends: list[RanOn] = ["none" if _needs_no_scores(v, t, p) else "torch" for v, t, p in items]
    return Selection(indices, backends)


def _triton_batch(items: Sequence[Item], why: str) -> Selection:
    from mipruner_vllm.kernels.launch import mi_prune

    indices: list[torch.Tensor | None] = [None] * len(items)
    backends: list[RanOn] = ["none"] * len(items)
    groups: dict[tuple, list[int]] = {}
    for b, (v, t, p) in enumerate(items):
        supported, reason = kernel_supports(p)
        if _needs_no_scores(v, t, p):  # arange or the uniform stride: index arithmetic only
            indices[b] = select_reference(v, t, p)
        elif not supported:
            announce("torch", f"fallback per item: {reason}")
            indices[b] = select_reference(v, t, p)
            backends[b] = "torch"
        else:
            dtype = v.dtype if v.dtype == t.dtype else torch.float32
            groups.setdefault((dtype, v.shape[1], v.device), []).append(b)
    if groups:
        announce("triton", why)
    for members in groups.values():
        group = [items[b] for b in members]
        out = mi_prune(
            [v for v, _, _ in group],
            [t for _, t, _ in group],
            [p.n_keep(v.shape[0]) for v, _, p in group],
            [float(p.mi_tau) for _, _, p in group],
            [float(p.mi_lambda) for _, _, p in group],
            [p.aggregation for _, _, p in group],
        )
        for b, idx in zip(members, out.indices, strict=True):
            indices[b] = idx
            backends[b] = "triton"
    routed = [r for r in indices if r is not None]
    if len(routed) != len(indices):  # every branch above assigns; this guards future edits
        raise RuntimeError("some items were not routed to any backend")
    return Selection(routed, backends)


def dispatch(
    visuals: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    params: Sequence[PruningParams],
    backend: str,
) -> Selection:
    """Select every (already checked) item on ``backend`` (auto | torch | triton)."""
    if backend not in BACKENDS:
        raise PruningParameterError(
            "backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    items = list(zip(visuals, texts, params, strict=True))
    if not items:
        return Selection([], [])
    if backend == "torch":
        announce("torch", "forced by backend=torch")
        return _torch_batch(items)
    on_cuda = all(v.is_cuda for v in visuals)
    if backend == "auto" and not on_cuda:
        announce("torch", "tensors are not on a CUDA device")
        return _torch_batch(items)
    usable, why = triton_status(visuals[0].device)
    if not usable:
        if backend == "triton":
            raise KernelUnavailableError(
                f"backend='triton' was requested but Triton cannot run: {why}. Use CUDA tensors, "
                "set TRITON_INTERPRET=1 (CPU interpreter, slow), or backend='torch'."
            )
        announce("torch", f"Triton unavailable: {why}")
        return _torch_batch(items)
    return _triton_batch(items, why)


# -- warm-up: which backend compiles, decided here; what to compile, by the kernels ------------


@dataclass(frozen=True)
class WarmupReport:
    """What :func:`warmup` did."""

    #: True when Triton kernels were launched (and so compiled for this device and dtype).
    ran: bool
    #: Why (not): e.g. the device, or that the torch backend has nothing to compile.
    reason: str
    seconds: float = 0.0
    #: Kernel specialisations compiled by the warm-up (None where Triton does not expose it).
    compiled: int | None = None


def warmup(
    device: torch.device | str, dtype: torch.dtype, hidden: int, *, backend: str = "auto"
) -> WarmupReport:
    """Compile the kernels for ``(device, dtype, hidden)`` where this dispatcher would use them.

    Call it when a model loads (``dtype`` and ``hidden`` of the embeddings it will select on):
    Triton compiles a kernel on its first launch with new constexprs, which would otherwise
    stall the first pruned request's engine step for seconds. The kernels' own
    :func:`~mipruner_vllm.kernels.launch.warm_up` launches every variant. Where the kernels
    would not run (CPU tensors, ``backend`` torch, Triton missing or interpreted) it does
    nothing and says why; it never raises for that.
    """
    device = torch.device(device)
    if backend == "torch":
        return _skip("backend=torch: nothing to compile")
    if device.type != "cuda":
        return _skip(f"{device.type} device: the torch reference needs no compilation")
    usable, why = triton_status(device)
    if not usable:
        return _skip(f"Triton cannot run: {why}")
    if interpret_enabled():
        return _skip("TRITON_INTERPRET=1: interpreted kernels are not compiled")
    from mipruner_vllm.kernels.launch import warm_up

    started = time.perf_counter()
    compiled = warm_up(device, dtype, hidden)
    report = WarmupReport(True, f"{device} {dtype} hidden {hidden}", time.perf_counter() - started,
                          compiled)  # fmt: skip
    logger.info(
        "mipruner: Triton kernels warmed up for %s in %.1f s (%s new specialisations)",
        report.reason, report.seconds, "?" if compiled is None else compiled,
    )  # fmt: skip
    return report


def _skip(reason: str) -> WarmupReport:
    logger.info("mipruner: kernel warm-up skipped (%s)", reason)
    return WarmupReport(False, reason)
