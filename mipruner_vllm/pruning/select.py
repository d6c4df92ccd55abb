# SPDX-License-Identifier: Apache-2.0
"""Public selection API: :func:`select_tokens` for one item, :func:`select_tokens_batch` for many.

All three entries validate their inputs, resolve defaults from the settings object, apply the
budget rule (:func:`~mipruner_vllm.params.n_keep`) and hand the batch to the one dispatcher,
:func:`mipruner_vllm.pruning.dispatch.dispatch`: the Triton kernels for CUDA tensors when they
support the request, the torch reference otherwise. :func:`select_batch` also says which
backend produced each item (what the vLLM worker reports in its metrics).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch

from mipruner_vllm.config import get_settings
from mipruner_vllm.errors import PruningInputError
from mipruner_vllm.params import PruningParams, resolve_params, takes_pruning_parameters
from mipruner_vllm.pruning.dispatch import Selection, dispatch, select_reference

__all__ = ["Selection", "select_batch", "select_reference", "select_tokens", "select_tokens_batch"]

#: TEST ONLY, never set in production. ``MIPRUNER_TEST_ONLY_FAULT`` in the environment of every
#: server process injects a fault the accuracy test (``tests/server/test_demo_accuracy.py``)
#: must catch: ``shifted-indices`` here (every kept index moves to the next token, modulo the
#: item: the off-by-one a broken gather would make), ``provisional-positions`` in
#: :mod:`mipruner_vllm.integration.mrope`. Read once, at import.
TEST_ONLY_FAULT_ENV = "MIPRUNER_TEST_ONLY_FAULT"
_SHIFTED_INDICES_FAULT = os.environ.get(TEST_ONLY_FAULT_ENV) == "shifted-indices"


def _shifted(selection: Selection, visuals: Sequence[torch.Tensor]) -> Selection:
    """The test-only fault: each kept index + 1 (modulo N_V), still ascending and distinct."""
    indices = [
        torch.sort((kept + 1) % max(v.shape[0], 1)).values
        for kept, v in zip(selection.indices, visuals, strict=True)
    ]
    return dataclasses.replace(selection, indices=indices)


def check_embeddings(visual: torch.Tensor, text: torch.Tensor, *, item: int | None = None) -> None:
    """Reject bad shapes, dtypes and devices, naming the argument (and the item); see
    check_finite."""
    where = "" if item is None else f"[{item}]"
    for name, x in (("visual", visual), ("text", text)):
        if not isinstance(x, torch.Tensor):
            raise PruningInputError(f"{name}{where} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise PruningInputError(
                f"{name}{where} must be 2-D (tokens, hidden), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise PruningInputError(f"{name}{where} must be a floating-point tensor, got {x.dtype}")
    if visual.shape[0] < 1:
        raise PruningInputError(
            f"visual{where} must have at least one token, got shape {tuple(visual.shape)}"
        )
    if text.shape[0] > 0 and text.shape[1] != visual.shape[1]:
        raise PruningInputError(
            f"text{where} hidden size {text.shape[1]} does not match visual hidden size "
            f"{visual.shape[1]}"
        )
    if text.shape[0] > 0 and text.device != visual.device:
        raise PruningInputError(
            f"text{where} is on {text.device} but visual{where} is on {visual.device}"
        )


def check_finite(visuals: Sequence[torch.Tensor], texts: Sequence[torch.Tensor]) -> None:
    """Reject NaN/inf in any item with one device-to-host sync for the whole batch.

    The vLLM worker calls this once per encoder batch, so it must not sync once per item; only
    on failure does it look for the item to name.
    """
    tensors = [x for pair in zip(visuals, texts, strict=True) for x in pair]
    flags = [torch.isfinite(x).all() for x in tensors if x.numel()]
    if not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):
        return
    for i, (v, t) in enumerate(zip(visuals, texts, strict=True)):
        where = "" if len(visuals) == 1 else f"[{i}]"
        for name, x in (("visual", v), ("text", t)):
            if x.numel() and not bool(torch.isfinite(x).all()):
                raise PruningInputError(f"{name}{where} contains NaN or inf values")


@takes_pruning_parameters(
    inspect.Parameter("visual", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
    inspect.Parameter("text", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
    trailing=(inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None),),
)
def select_tokens(
    visual: torch.Tensor,
    text: torch.Tensor,
    *,
    backend: str | None = None,
    **params: Any,
) -> torch.Tensor:
    """Indices of the visual tokens to keep, ascending, exactly ``N_keep`` long.

    ``visual``: ``(N_V, d)`` projected visual embeddings of one media item (what the LLM would
    receive); ``text``: ``(N_T, d)`` input embeddings of the query tokens (``N_T`` may be 0).
    ``params`` are the pruning parameters by their Python names (``keep_ratio``, ``keep_tokens``,
    ``method``, ``mi_lambda``, ``mi_tau``, ``aggregation``, ``normalization``,
    ``trim_stage1_ratio``, ``seed``: :data:`mipruner_vllm.config.PRUNING_PARAMETERS`); unset ones
    take their defaults from :class:`~mipruner_vllm.config.MiprunerSettings`.
    ``N_keep`` follows :func:`~mipruner_vllm.params.n_keep`. ``backend`` is ``"auto"`` (Triton
    for CUDA tensors, torch otherwise), ``"torch"`` or ``"triton"``. Any dtype is computed in
    float32. Raises :class:`~mipruner_vllm.errors.PruningParameterError` /
    :class:`~mipruner_vllm.errors.PruningInputError` (both ``ValueError``) on bad input.
    """
    resolved = resolve_params(**params)
    return select_tokens_batch([visual], [text], resolved, backend=backend)[0]


def select_batch(
    visuals: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    params: PruningParams | Sequence[PruningParams],
    *,
    backend: str | None = None,
) -> Selection:
    """:func:`select_tokens_batch` that also reports which backend produced each item.

    Returns a :class:`~mipruner_vllm.pruning.dispatch.Selection`: ``indices`` (one tensor per
    item, in item order) and ``backends`` (``"triton"``, ``"torch"`` or ``"none"`` per item).
    """
    if len(visuals) != len(texts):
        raise PruningInputError(f"got {len(visuals)} visual items but {len(texts)} text items")
    if isinstance(params, PruningParams):
        params = [params] * len(visuals)
    elif len(params) != len(visuals):
        raise PruningInputError(f"got {len(visuals)} items but {len(params)} parameter sets")
    for i, (v, t) in enumerate(zip(visuals, texts, strict=True)):
        check_embeddings(v, t, item=i if len(visuals) > 1 else None)
    check_finite(visuals, texts)
    backend = backend if backend is not None else get_settings().backend
    selection = dispatch(list(visuals), list(texts), list(params), backend)
    if _SHIFTED_INDICES_FAULT:  # test only (TEST_ONLY_FAULT_ENV)
        return _shifted(selection, visuals)
    return selection


def select_tokens_batch(
    visuals: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    params: PruningParams | Sequence[PruningParams],
    *,
    backend: str | None = None,
) -> list[torch.Tensor]:
    """:func:`select_tokens` over several items of different sizes and parameters at once.

    This is the shape the vLLM layer uses for one encoder batch (items from different requests).
    ``params`` is one :class:`~mipruner_vllm.params.PruningParams` for all items or one per item
    (build them with :func:`~mipruner_vllm.params.resolve_params`). Returns one index tensor per
    item, in item order.
    """
    return select_batch(visuals, texts, params, backend=backend).indices
