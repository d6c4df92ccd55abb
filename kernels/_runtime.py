# SPDX-License-Identifier: Apache-2.0
"""Whether the Triton kernels can run here, and the packed varlen layout they share.

Nothing in this module imports triton at import time, so ``import mipruner_vllm`` and the torch
path keep working on machines without it.

The packed layout is the one of varlen attention: the visual tokens of every item are
concatenated into one ``(sum N_V, d)`` tensor, the text tokens into one ``(sum N_T, d)`` tensor,
and int64 offset arrays ``v_off`` / ``t_off`` of length ``B + 1`` say where item ``b`` starts and
ends. Per-item parameters (``N_keep``, ``tau``, ``lambda``) are length-``B`` device tensors, so
items of different requests share one launch.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch


def interpret_enabled() -> bool:
    """``TRITON_INTERPRET=1``: kernels run on CPU tensors through Triton's numpy interpreter.

    Triton reads the variable when ``@triton.jit`` decorates a function, i.e. when a kernel
    module is first imported, so it must be set before :mod:`mipruner_vllm.kernels.mi_select`
    is imported (the kernel tests set it in ``tests/kernel/conftest.py`` at import time).
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def upcast_dot(dtype: torch.dtype) -> bool:
    """Route ``tl.dot`` through fp32: only bf16 under the interpreter, whose numpy dot misreads
    bf16."""
    return dtype == torch.bfloat16 and interpret_enabled()


def triton_status(device: torch.device | None = None) -> tuple[bool, str]:
    """``(usable, reason)``: can the kernels run on tensors of ``device``, and why (not)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if interpret_enabled():
        return True, "TRITON_INTERPRET=1 (Triton interpreter on CPU)"
    if device is not None and device.type != "cuda":
        return False, f"tensors are on {device.type} and TRITON_INTERPRET is not set"
    if not torch.cuda.is_available():
        return False, "no CUDA device and TRITON_INTERPRET is not set"
    return True, "CUDA tensors"


@dataclass(frozen=True)
class PackedItems:
    """A varlen batch: concatenated tokens plus offsets (host lists and device tensors)."""

    visual: torch.Tensor  # (sum N_V, d), one dtype for the whole pack
    text: torch.Tensor  # (sum N_T, d), same dtype as ``visual``
    n_visual: tuple[int, ...]
    n_text: tuple[int, ...]
    v_off: torch.Tensor  # (B + 1,) int64
    t_off: torch.Tensor  # (B + 1,) int64

    @property
    def size(self) -> int:
        return len(self.n_visual)

    @property
    def dim(self) -> int:
        return self.visual.shape[1]


def host_tensor(
    values: list[int] | list[float], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Launch metadata built from host values (shapes are known on the host: no device sync).

    On CUDA the values go through pinned memory with a non-blocking copy, so building the offset
    arrays never waits for kernels already queued (e.g. the vision encoder's).
    """
    cpu = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return cpu.to(device)
    return cpu.pin_memory().to(device, non_blocking=True)


def _offsets(lengths: list[int], device: torch.device) -> torch.Tensor:
    off = [0]
    for n in lengths:
        off.append(off[-1] + n)
    return host_tensor(off, torch.int64, device)


def _concat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``torch.cat`` of row blocks, or a zero-copy view when they already lie back to back.

    vLLM hands the items of one encoder batch over as consecutive slices of one output buffer;
    re-copying them would cost a full extra read and write of V, more than the kernels' own
    traffic, so that case is detected and viewed instead.
    """
    first = parts[0]
    dim = first.shape[1]
    contiguous = all(
        p.dtype == dtype and p.device == first.device and p.is_contiguous() and p.shape[1] == dim
        for p in parts
    )
    if contiguous:
        storage = first.untyped_storage()
        offset = first.storage_offset()
        for p in parts:
            if p.untyped_storage().data_ptr() != storage.data_ptr() or p.storage_offset() != offset:
                break
            offset += p.numel()
        else:
            rows = sum(p.shape[0] for p in parts)
            return first.new_empty(0).set_(storage, first.storage_offset(), (rows, dim), (dim, 1))
    return torch.cat([p.to(dtype) for p in parts]).contiguous()


def pack_items(visuals: list[torch.Tensor], texts: list[torch.Tensor]) -> PackedItems:
    """Concatenate items into the packed layout; every item needs ``N_V >= 1`` and ``N_T >= 1``.

    Items whose dtypes differ are packed in float32 (the math is float32 anyway); a text dtype
    different from the visual one is cast the same way, because ``tl.dot`` needs equal operands.
    """
    if not visuals:
        raise ValueError("pack_items needs at least one item")
    dims = {v.shape[1] for v in visuals} | {t.shape[1] for t in texts}
    if len(dims) != 1:
        raise ValueError(f"all items of one pack need the same hidden size, got {sorted(dims)}")
    dtypes = {v.dtype for v in visuals} | {t.dtype for t in texts}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.float32
    device = visuals[0].device
    visual = _concat(list(visuals), dtype)
    text = _concat(list(texts), dtype)
    n_visual = tuple(v.shape[0] for v in visuals)
    n_text = tuple(t.shape[0] for t in texts)
    return PackedItems(
        visual=visual,
        text=text,
        n_visual=n_visual,
        n_text=n_text,
        v_off=_offsets(list(n_visual), device),
        t_off=_offsets(list(n_text), device),
    )


def block_table(
    lengths: tuple[int, ...], block: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(item, block-within-item)`` of every program of a row-blocked varlen launch (int32)."""
    items: list[int] = []
    blocks: list[int] = []
    for b, n in enumerate(lengths):
        nb = -(-n // block)
        items.extend([b] * nb)
        blocks.extend(range(nb))
    return host_tensor(items, torch.int32, device), host_tensor(blocks, torch.int32, device)
