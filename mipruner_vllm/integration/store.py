# SPDX-License-Identifier: Apache-2.0
"""Content-keyed store of unpruned encoder outputs (worker process), LRU under a byte budget.

Why it exists: the vision tower + projector output of a media item depends only on the media and
the processor settings, while the plugin's selection also depends on the question and the pruning
parameters. vLLM's own encoder cache is keyed by the item's multimodal hash, which (rightly) folds
in the question when a request prunes, so a follow-up question about an image vLLM has already
seen misses it and would re-run the whole tower. This store keeps the *unpruned* output under the
hash stock vLLM would have given the item (the processor computes it with every pruning field
stripped and sends it along as a per-item field), and the model runs the selection on the stored
output every time.

Rules that keep it exact and safe:

* A hit returns a bit-identical copy of what the tower produced (same dtype, no quantisation).
* Tensor-parallel ranks must agree on every hit and miss (each rank runs the tower's collectives):
  the store is driven only by the sequence of encoder batches, which every rank sees in the same
  order, and by byte counts that are equal on every rank. Nothing depends on time, free memory or
  the rank.
* Entries live in host memory by default (pinned when the outputs are on a CUDA device), so the
  store never competes with the KV cache that vLLM's memory profile sized. ``device`` storage is
  an option for hosts with spare accelerator memory.
* ``capacity_bytes = 0`` disables it. An item larger than the whole budget is not stored.
* Each data-parallel engine has its own store; building one tells the metrics which engine this
  process serves (:func:`mipruner_vllm.metrics.bind_engine`), so each store is counted apart.

This module needs torch only (no vLLM), so its unit tests run without an engine.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Literal, TypeVar

import torch

from mipruner_vllm.metrics import bind_engine

StoreDevice = Literal["cpu", "device"]
T = TypeVar("T")


def _tensor_fields(item: Any) -> list[str]:
    return [
        f.name for f in dataclasses.fields(item) if isinstance(getattr(item, f.name), torch.Tensor)
    ]


def item_nbytes(item: Any) -> int:
    """Bytes held by the tensors of a dataclass item (what an entry costs)."""
    return sum(
        getattr(item, name).numel() * getattr(item, name).element_size()
        for name in _tensor_fields(item)
    )


def _copy_to(item: T, devices: dict[str, torch.device] | torch.device | str | None, pin: bool) -> T:
    """A copy of ``item`` whose tensors own their memory (never a view into a batch tensor).

    ``devices``: one target for every tensor, one per field name, or ``None`` (stay put).
    """
    updates: dict[str, torch.Tensor] = {}
    for name in _tensor_fields(item):
        tensor: torch.Tensor = getattr(item, name)
        if devices is None:
            target = tensor.device
        elif isinstance(devices, dict):
            target = devices.get(name, tensor.device)
        else:
            target = torch.device(devices)
        if pin and target.type == "cpu" and tensor.is_cuda:
            copy = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            # Ordered on the current stream: any later read of the copy (a hit's host-to-device
            # copy) is queued after it, so no host sync is needed here.
            copy.copy_(tensor, non_blocking=True)
        elif target == tensor.device:
            copy = tensor.detach().clone()
        else:
            copy = tensor.detach().to(target, non_blocking=True, copy=True)
        updates[name] = copy
    return dataclasses.replace(item, **updates)  # type: ignore[type-var]


class EncoderStore:
    """LRU of encoder outputs by content key, bounded by ``capacity_bytes``.

    ``get`` and ``put`` take and return dataclass items (the model's ``EncodedItem``). ``tag`` is
    what the batch expects of the entry (the item's unpruned size): an entry stored under another
    tag is a miss and gets replaced, so a hit always returns exactly the rows the placeholders
    were sized for.
    """

    def __init__(self, capacity_bytes: int, storage: StoreDevice = "cpu") -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = int(capacity_bytes)
        self.storage = storage
        #: The data-parallel engine whose metrics this store's batches move ("0" outside vLLM).
        self.engine = bind_engine()
        # key -> (stored item, bytes, tag, the device each tensor field came from)
        self._entries: OrderedDict[bytes, tuple[Any, int, Any, dict[str, torch.device]]] = (
            OrderedDict()
        )
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def get(self, key: bytes, tag: Any = None) -> Any | None:
        """A fresh copy of the item stored for ``key``, or ``None`` on a miss.

        Each tensor comes back on the device it was produced on (embeddings on the model's
        device, host-side bookkeeping such as positions on the host), as if just encoded.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        item, _, stored_tag, devices = entry
        if stored_tag != tag:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return _copy_to(item, devices, pin=False)

    def put(self, key: bytes, item: Any, tag: Any = None) -> int:
        """Store a copy of ``item``; returns how many entries were evicted to make room."""
        if not self.enabled:
            return 0
        if key in self._entries:
            self._drop(key)
        nbytes = item_nbytes(item)
        if nbytes > self.capacity_bytes:
            return 0
        evicted = 0
        while self.bytes + nbytes > self.capacity_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            evicted += 1
        devices = {name: getattr(item, name).device for name in _tensor_fields(item)}
        if self.storage == "cpu":
            stored = _copy_to(item, "cpu", pin=torch.cuda.is_available())
        else:
            stored = _copy_to(item, None, pin=False)
        self._entries[key] = (stored, nbytes, tag, devices)
        self.bytes += nbytes
        return evicted

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: bytes) -> None:
        _, nbytes, _, _ = self._entries.pop(key)
        self.bytes -= nbytes


__all__ = ["EncoderStore", "StoreDevice", "item_nbytes"]
