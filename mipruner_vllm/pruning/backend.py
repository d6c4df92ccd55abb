# SPDX-License-Identifier: Apache-2.0
"""Backend dispatch: which implementation runs a batch of selections, and one log line saying why.

``auto`` sends CUDA tensors to the Triton kernels (:mod:`mipruner_vllm.kernels`) and everything
else to the torch reference. ``torch`` always uses the reference. ``triton`` requires the kernels
and raises :class:`~mipruner_vllm.errors.KernelUnavailableError` when they cannot run.
"""

from __future__ import annotations

import logging

import torch

from mipruner_vllm.config import BACKENDS
from mipruner_vllm.errors import PruningParameterError
from mipruner_vllm.params import PruningParams

logger = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


def announce(backend: str, reason: str) -> None:
    """Log which backend is active, once per (backend, reason) and process."""
    if (backend, reason) not in _announced:
        _announced.add((backend, reason))
        logger.info("mipruner selection backend: %s (%s)", backend, reason)


def run_batch(
    visuals: list[torch.Tensor], texts: list[torch.Tensor], params: list[PruningParams], backend: str
) -> list[torch.Tensor]:
    """Run checked items on ``backend`` (auto | torch | triton)."""
    from mipruner_vllm.pruning.select import select_reference

    if backend not in BACKENDS:
        raise PruningParameterError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and not all(v.is_cuda for v in visuals)):
        announce("torch", "forced by backend=torch" if backend == "torch" else "tensors are not on a CUDA device")
        return [select_reference(v, t, p) for v, t, p in zip(visuals, texts, params, strict=True)]
    from mipruner_vllm.kernels import triton_select_batch

    return triton_select_batch(visuals, texts, params, forced=backend == "triton")
