# SPDX-License-Identifier: Apache-2.0
"""Triton helpers shared by the kernels of :mod:`~mipruner_vllm.kernels.mi_select` and
:mod:`~mipruner_vllm.kernels.mi_greedy`; Triton inlines them, so they cost nothing at run time.

They read the packed varlen layout (:mod:`mipruner_vllm.kernels._runtime`): offset arrays of
``B + 1`` int64 entries and, for row-blocked launches, the host-built block table that maps each
program to ``(item, row block)``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def row_block(BLOCK_ITEM_ptr, BLOCK_ROW_ptr):
    """``(item, row block)`` of this program in a row-blocked launch, both int64."""
    pid = tl.program_id(0)
    item = tl.load(BLOCK_ITEM_ptr + pid).to(tl.int64)
    return item, tl.load(BLOCK_ROW_ptr + pid).to(tl.int64)


@triton.jit
def item_span(OFF_ptr, item):
    """``(start, length)`` of ``item`` in a packed dimension: a 64-bit start (the pack can exceed
    2^31 elements) and an int32 length (offsets inside an item stay int32, see mi_select)."""
    start = tl.load(OFF_ptr + item)
    return start, (tl.load(OFF_ptr + item + 1) - start).to(tl.int32)


@triton.jit
def dot_tile(a, b, acc, FP32_INPUT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``acc + a b^T`` for row tiles ``a`` and ``b`` of one hidden chunk, accumulated in fp32."""
    if FP32_INPUT:
        # 3xTF32 keeps fp32 accuracy on tensor cores; plain TF32 would break parity.
        acc = tl.dot(a, tl.trans(b), acc, input_precision="tf32x3")
    elif UPCAST_DOT:
        # Interpreter only: its numpy tl.dot misreads bf16; the products are exact in fp32
        # either way, so this changes nothing but the route.
        acc = tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc)
    else:
        # bf16/fp16 products are exact in the fp32 accumulator.
        acc = tl.dot(a, tl.trans(b), acc)
    return acc


@triton.jit
def online_logsumexp(m_i, s_i, tile):
    """One column tile more of a row logsumexp kept as ``(max, sum of exp(x - max))`` per row,
    flash-attention style: the rows never need to be held whole. -inf entries add nothing."""
    m_new = tl.maximum(m_i, tl.max(tile, axis=1))
    return m_new, s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(tile - m_new[:, None]), axis=1)
