# SPDX-License-Identifier: Apache-2.0
"""How pruning parameters and query tokens travel from the processor to the model, per item.

vLLM hands ``embed_multimodal`` only the per-item tensors the processor produced, batched across
requests (one call may mix items of many requests, each with its own parameters). So every item
carries two extra fields:

* ``mipruner_<modality>_params``: an int64 vector, one slot per parameter of
  :data:`~mipruner_vllm.config.PRUNING_PARAMETERS` in declaration order, holding the resolved
  :class:`~mipruner_vllm.params.PruningParams` of the item's request. Every value is carried
  exactly: integers (budget, seed: a seed above 2**53 would be rounded by a float64) as
  themselves, numbers as the bits of their float64, choices as their index
  (:meth:`~mipruner_vllm.config.Parameter.to_slot`);
* ``mipruner_<modality>_text_ids``: an int64 vector of the item's query token ids (may be empty).

Every item carries both, pruned or not (unpruned items carry :data:`KEEP_ALL`), because vLLM puts
items with different field sets into different encoder batches. This module is torch-only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from mipruner_vllm.config import PRUNING_PARAMETERS
from mipruner_vllm.params import REQUEST_FIELDS, PruningParams

#: The one key the processor adds to ``mm_processor_kwargs`` (and so to the multimodal hash)
#: when a request prunes: normalised parameters, query token ids and the selection version.
PRUNING_KWARG = "mipruner"

#: Bump when a change to the selection would change which tokens are kept for the same inputs,
#: so that cached encoder outputs and prefix-cache blocks of the old selection are not reused.
SELECTION_VERSION = 1

#: Order of the values in the params vector (the declaration order).
PARAM_LAYOUT: tuple[str, ...] = tuple(p.name for p in PRUNING_PARAMETERS)

#: The slot value of an unset optional parameter (keep_tokens when keep_ratio is the budget, and
#: keep_ratio when keep_tokens is): no valid value encodes to it (budgets are >= 1 or in (0, 1]).
UNSET = -(2**63)

#: Parameters of an item that keeps every token (the stock-vLLM path).
KEEP_ALL = PruningParams(keep_ratio=1.0, method="none")

#: Every key a request may use for pruning; stripped before anything reaches Hugging Face.
PRUNING_REQUEST_KEYS = frozenset(REQUEST_FIELDS) | {PRUNING_KWARG, "mipruner_content"}


def params_field(modality: str) -> str:
    return f"mipruner_{modality}_params"


def text_field(modality: str) -> str:
    return f"mipruner_{modality}_text_ids"


def strip_pruning_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` without any pruning key: what Hugging Face processors may see."""
    return {k: v for k, v in kwargs.items() if k not in PRUNING_REQUEST_KEYS}


#: The slot of ``pruning_detail``: it carries the item's detail token (0: no detail asked).
DETAIL_SLOT = PARAM_LAYOUT.index("pruning_detail")


def encode_params(params: PruningParams, detail_token: int = 0) -> torch.Tensor:
    """The params vector of one item (see the module docstring); exact for every value.

    ``detail_token``: the item's key for handing its kept indices back to the API server
    (:mod:`mipruner_vllm.detail`); it fills the ``pruning_detail`` slot (0: not asked).
    """
    slots = [
        UNSET if getattr(params, p.name) is None else p.to_slot(getattr(params, p.name))
        for p in PRUNING_PARAMETERS
    ]
    slots[DETAIL_SLOT] = int(detail_token)
    return torch.tensor(slots, dtype=torch.int64)


def decode_params(vector: torch.Tensor) -> PruningParams:
    """The inverse of :func:`encode_params` (the values were validated where they entered)."""
    slots = [int(x) for x in vector.reshape(-1).tolist()]
    if len(slots) != len(PARAM_LAYOUT):
        raise ValueError(
            f"pruning params vector has {len(slots)} values, expected {len(PARAM_LAYOUT)}"
        )
    values: dict[str, Any] = {
        p.name: None if slot == UNSET else p.from_slot(slot)
        for p, slot in zip(PRUNING_PARAMETERS, slots, strict=True)
    }
    return PruningParams.model_construct(**values)


def detail_token(vector: torch.Tensor) -> int:
    """The detail token an item's params vector carries (0: the request asked no detail)."""
    return int(vector.reshape(-1)[DETAIL_SLOT])


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
