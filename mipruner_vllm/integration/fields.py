# SPDX-License-Identifier: Apache-2.0
"""How pruning parameters and query tokens travel from the processor to the model, per item.

vLLM hands ``embed_multimodal`` only the per-item tensors the processor produced, batched across
requests (one call may mix items of many requests, each with its own parameters; pitfall 13 of
the integration memo). So every item carries two extra fields:

* ``mipruner_<modality>_params``: a float64 vector (:data:`PARAM_LAYOUT`) holding the resolved
  :class:`~mipruner_vllm.params.PruningParams` of the item's request;
* ``mipruner_<modality>_text_ids``: an int64 vector of the item's query token ids (may be empty).

Every item carries both, pruned or not (unpruned items carry :data:`KEEP_ALL`), because vLLM puts
items with different field sets into different encoder batches. This module is torch-only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch

from mipruner_vllm.config import AGGREGATIONS, NORMALIZATIONS, PRUNING_METHODS
from mipruner_vllm.params import REQUEST_FIELDS, PruningParams

#: The one key the processor adds to ``mm_processor_kwargs`` (and so to the multimodal hash)
#: when a request prunes: normalised parameters, query token ids and the selection version.
PRUNING_KWARG = "mipruner"

#: Bump when a change to the selection would change which tokens are kept for the same inputs,
#: so that cached encoder outputs and prefix-cache blocks of the old selection are not reused.
SELECTION_VERSION = 1

#: Order of the values in the params vector.
PARAM_LAYOUT = (
    "keep_ratio",  # NaN when keep_tokens is the budget
    "keep_tokens",  # -1 when keep_ratio is the budget
    "method",  # index into PRUNING_METHODS
    "mi_lambda",
    "mi_tau",
    "aggregation",  # index into AGGREGATIONS
    "normalization",  # index into NORMALIZATIONS
    "trim_stage1_ratio",
    "seed",
)

#: Parameters of an item that keeps every token (the stock-vLLM path).
KEEP_ALL = PruningParams(keep_ratio=1.0, method="none")

#: Every key a request may use for pruning; stripped before anything reaches Hugging Face.
PRUNING_REQUEST_KEYS = frozenset(REQUEST_FIELDS) | {PRUNING_KWARG, "mipruner_content"}


def params_field(modality: str) -> str:
    return f"mipruner_{modality}_params"


def text_field(modality: str) -> str:
    return f"mipruner_{modality}_text_ids"


def strip_pruning_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` without any pruning key: what Hugging Face processors may see (pitfall 4)."""
    return {k: v for k, v in kwargs.items() if k not in PRUNING_REQUEST_KEYS}


def encode_params(params: PruningParams) -> torch.Tensor:
    values = [
        math.nan if params.keep_ratio is None else float(params.keep_ratio),
        -1.0 if params.keep_tokens is None else float(params.keep_tokens),
        float(PRUNING_METHODS.index(params.method)),
        float(params.mi_lambda),
        float(params.mi_tau),
        float(AGGREGATIONS.index(params.aggregation)),
        float(NORMALIZATIONS.index(params.normalization)),
        float(params.trim_stage1_ratio),
        float(params.seed),
    ]
    return torch.tensor(values, dtype=torch.float64)


def decode_params(vector: torch.Tensor) -> PruningParams:
    v = [float(x) for x in vector.reshape(-1).tolist()]
    if len(v) != len(PARAM_LAYOUT):
        raise ValueError(f"pruning params vector has {len(v)} values, expected {len(PARAM_LAYOUT)}")
    return PruningParams(
        keep_ratio=None if math.isnan(v[0]) else v[0],
        keep_tokens=None if v[1] < 0 else int(v[1]),
        method=PRUNING_METHODS[int(v[2])],
        mi_lambda=v[3],
        mi_tau=v[4],
        aggregation=AGGREGATIONS[int(v[5])],
        normalization=NORMALIZATIONS[int(v[6])],
        trim_stage1_ratio=v[7],
        seed=int(v[8]),
    )


def unbatch(value: Any, n: int) -> list[torch.Tensor]:
    """Per-item tensors of a batched field: vLLM stacks equal shapes and lists the others."""
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0)) if value.dim() > 0 else [value]
    items = list(value)
    if len(items) != n:
        raise ValueError(f"pruning field has {len(items)} items, expected {n}")
    return items


# -- content keys of the encoder-output store (see mipruner_vllm.integration.store) ------------

#: The key the processor adds to ``mm_processor_kwargs`` with each item's content hash (the hash
#: stock vLLM gives the item); never part of any hash itself, never seen by Hugging Face.
CONTENT_KWARG = "mipruner_content"
#: Bytes of a content key as it travels (a SHA-256 of vLLM's hash string, so any hasher fits).
CONTENT_KEY_BYTES = 32


def content_field(modality: str) -> str:
    return f"mipruner_{modality}_content"


def encode_content_key(mm_hash: str | None) -> torch.Tensor:
    """A per-item uint8 vector for ``mm_hash``; all zeros means "do not store this item"."""
    if mm_hash is None:
        return torch.zeros(CONTENT_KEY_BYTES, dtype=torch.uint8)
    digest = hashlib.sha256(mm_hash.encode()).digest()
    return torch.frombuffer(bytearray(digest), dtype=torch.uint8)


def decode_content_keys(value: Any, n: int) -> list[bytes | None]:
    """The store keys of ``n`` items from the batched content field (``None``: not storable)."""
    keys: list[bytes | None] = []
    for vector in unbatch(value, n):
        raw = bytes(vector.reshape(-1).to(torch.uint8).tolist())
        keys.append(raw if len(raw) == CONTENT_KEY_BYTES and any(raw) else None)
    return keys
