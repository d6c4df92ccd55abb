# SPDX-License-Identifier: Apache-2.0
"""Triton selection kernels, installed as ``mipruner_vllm.kernels`` (placeholder until issue 3)."""

from __future__ import annotations

from mipruner_vllm.errors import KernelUnavailableError


def triton_select_batch(visuals, texts, params, *, forced: bool):  # noqa: ANN001
    from mipruner_vllm.pruning.backend import announce
    from mipruner_vllm.pruning.select import select_reference

    if forced:
        raise KernelUnavailableError("backend='triton' requested but the Triton kernels are not built yet")
    announce("torch", "Triton kernels not available")
    return [select_reference(v, t, p) for v, t, p in zip(visuals, texts, params, strict=True)]
