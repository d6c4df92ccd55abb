# SPDX-License-Identifier: Apache-2.0
"""M-RoPE positions for pruned media (Qwen2-VL / Qwen2.5-VL), exact under every cache path.

Qwen-VL models give every visual token a (t, h, w) position and continue the text after an item
from ``max(item positions) + 1``. After pruning, the kept tokens must keep their *original*
positions and the text after the item must continue exactly as without pruning; only then is the
model at keep_ratio = 1 identical to stock vLLM, and a pruned prompt consistent across prefix-cache
hits and chunked prefill (vLLM computes positions once per request, before the encoder runs,
and again per prefill chunk). Two pieces do that:

1. :func:`pruned_mrope_input_positions` replaces the model's ``get_mrope_input_positions``, which
   vLLM calls once per request before anything is encoded. It advances by the *placeholder*
   length of each item (stock code assumes the unpruned ``t*h*w``) and continues the text
   from the unpruned ``base + max(grid) + 1`` (stock EVS uses ``grid_w``). All text
   positions, and the decode offset ``mrope_position_delta``, are therefore final here. The media
   tokens of a pruned item get provisional positions (the first ``n_keep`` of its grid): which
   tokens are kept is only known after the encoder.
2. The model returns each item's kept rows with :data:`POSITION_COLUMNS` extra columns, the kept
   tokens' grid positions relative to the item start (:func:`encode_positions`).
   :func:`recompute_media_positions` (the model's ``recompute_mrope_positions``, called by the
   runner for every prefill chunk that contains media rows) strips those columns and writes the
   positions of exactly the rows in the chunk; it never renumbers text. Items served from the
   prefix cache never reach it, and need not: their KV entries were computed with the right
   positions, and the text after them is final from step 1.

Positions travel as ``hi * 256 + lo`` pairs so they are exact in bfloat16/float16 embeddings
(bf16 represents integers exactly only up to 256) for positions below 65,536.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from mipruner_vllm.pruning.select import TEST_ONLY_FAULT_ENV

#: Extra columns appended to each media item's embeddings: (t, h, w) as (hi, lo) pairs.
POSITION_COLUMNS = 6
_RADIX = 256
#: Column value of a row whose position cannot be carried (>= 65,536): every column of the row
#: holds it, it decodes to a negative position, and :func:`recompute_media_positions` then leaves
#: the row at the provisional position ``get_mrope_input_positions`` gave it.
KEEP_PROVISIONAL = -1.0
#: Positions below this are carried exactly (two base-256 digits).
POSITION_LIMIT = _RADIX * _RADIX

#: TEST ONLY, never set in production: with ``MIPRUNER_TEST_ONLY_FAULT=provisional-positions``
#: (:data:`mipruner_vllm.pruning.select.TEST_ONLY_FAULT_ENV`) in the environment of every server
#: process, :func:`recompute_media_positions` writes no media position, so a pruned item's kept
#: tokens stay at the provisional positions (the first ``n_keep`` of the grid in raster order):
#: the position bug this module exists to prevent.
_PROVISIONAL_POSITIONS_FAULT = os.environ.get(TEST_ONLY_FAULT_ENV) == "provisional-positions"


def grid_positions(t: int, h: int, w: int, t_factor: float = 1.0) -> torch.Tensor:
    """``(t*h*w, 3)`` (t, h, w) positions of an item relative to its start, raster order.

    Same values as vLLM's Qwen ``get_mrope_input_positions`` (``np.indices``; the temporal index
    is scaled by ``t_factor = second_per_grid_ts * tokens_per_second`` and truncated).
    """
    grid = np.indices((t, h, w))
    if t_factor != 1.0:
        grid[0] = (grid[0] * t_factor).astype(np.int64)
    return torch.from_numpy(grid.reshape(3, -1).T.astype(np.int64))


def encode_positions(
    positions: torch.Tensor, dtype: torch.dtype, *, check: bool = True
) -> torch.Tensor:
    """``(n, 3)`` int positions -> ``(n, POSITION_COLUMNS)`` columns exact in ``dtype``.

    ``check=False`` skips the range check (a device-to-host read) for positions already known
    to be below :data:`POSITION_LIMIT`.
    """
    if check and positions.numel() and int(positions.max()) >= POSITION_LIMIT:
        raise ValueError(
            f"media position {int(positions.max())} too large to carry (limit {_RADIX * _RADIX})"
        )
    hi = torch.div(positions, _RADIX, rounding_mode="floor")
    lo = positions - hi * _RADIX
    return torch.stack([hi, lo], dim=2).reshape(positions.shape[0], POSITION_COLUMNS).to(dtype)


def decode_positions(columns: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_positions`: ``(n, POSITION_COLUMNS)`` -> ``(3, n)`` int64."""
    pairs = columns.float().round().long().reshape(columns.shape[0], 3, 2)
    return (pairs[..., 0] * _RADIX + pairs[..., 1]).T


def pruned_mrope_input_positions(
    grids: Iterable[tuple[int, int, int, int, float]],
    lengths: Sequence[int],
    num_tokens: int,
) -> tuple[torch.Tensor, int]:
    """Positions ``(3, num_tokens)`` and the decode delta, for placeholder runs of any length.

    ``grids`` yields ``(offset, t, h, w, t_factor)`` per item in prompt order (the model's
    ``iter_mm_grid_thw``), ``lengths`` the items' placeholder lengths. With every length equal to
    ``t*h*w`` the result equals vLLM's stock Qwen2/2.5-VL computation.
    """
    chunks: list[np.ndarray] = []
    st = 0  # next prompt index to place
    next_pos = 0  # position of the next text token
    for (offset, t, h, w, t_factor), length in zip(grids, lengths, strict=True):
        text_len = offset - st
        chunks.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_pos)
        base = next_pos + text_len
        grid = grid_positions(t, h, w, t_factor).T.numpy()
        if length > grid.shape[1]:
            raise ValueError(
                f"media item at {offset} has {length} placeholders for {grid.shape[1]} tokens"
            )
        # Provisional for a pruned item; recompute_media_positions writes the kept tokens' values.
        chunks.append(grid[:, :length] + base)
        next_pos = base + int(grid.max()) + 1
        st = offset + length
    if st < num_tokens:
        text_len = num_tokens - st
        chunks.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_pos)
    positions = (
        np.concatenate(chunks, axis=1).reshape(3, -1) if chunks else np.zeros((3, 0), np.int64)
    )
    delta = int(positions.max()) + 1 - num_tokens if positions.size else 0
    return torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)), delta


def recompute_media_positions(
    input_ids: Sequence[int] | torch.Tensor,
    multimodal_embeddings: Sequence[torch.Tensor],
    mrope_positions: torch.Tensor,
    num_computed_tokens: int,
    media_token_ids: Sequence[int],
) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    """Strip the position columns and write the media positions of this prefill chunk.

    ``multimodal_embeddings`` are what the runner gathered for one request and one step: for each
    item overlapping the scheduled window, in prompt order, the rows of its media tokens inside
    that window (the first may start inside an item under chunked prefill or a partial prefix-cache
    hit). Each row carries its position relative to the start of its *run*, a maximal block of
    consecutive media tokens: a Qwen2/2.5-VL image or video is one run, a Qwen3-VL video frame
    is one run (timestamps and vision-start/end tokens separate them). Returns ``(stripped
    embeddings, positions, delta)``; ``positions`` is a new tensor, text positions are unchanged.

    The gathered rows are exactly the media tokens at or after ``num_computed_tokens``, in prompt
    order, so the r-th row belongs to the r-th such token, at ``(its run's base) + (row's
    columns)``, the base being one past the text position right before the run. All of it is
    computed with whole-tensor operations (cumulative sums and maxima, ``where``), never by
    reading device values in a loop: when vLLM's GPU runner passes device tensors, the only
    device-to-host read is the one scalar of the returned ``delta``. Rows marked
    :data:`KEEP_PROVISIONAL` keep the positions they have; rows beyond the window's media tokens
    (a layout the processor did not produce) are ignored rather than raised on, because an
    exception here would stop vLLM's engine.
    """
    if not multimodal_embeddings:
        delta = (
            int(mrope_positions.max()) + 1 - mrope_positions.shape[1]
            if mrope_positions.numel()
            else 0
        )
        return [], mrope_positions, delta
    device = mrope_positions.device
    ids = (
        input_ids
        if isinstance(input_ids, torch.Tensor)
        else torch.tensor(list(input_ids), dtype=torch.long)
    )
    ids = ids.to(device=device, dtype=torch.long)
    length = ids.shape[0]
    media = torch.zeros(length, dtype=torch.bool, device=device)
    for token_id in media_token_ids:
        media |= ids == int(token_id)
    stripped = [emb[:, :-POSITION_COLUMNS] for emb in multimodal_embeddings]
    columns = torch.cat(
        [decode_positions(emb[:, -POSITION_COLUMNS:]) for emb in multimodal_embeddings], dim=1
    )
    columns = columns.to(device)
    n_rows = columns.shape[1]

    index = torch.arange(length, device=device)
    # Run structure over the whole prompt: each media token's run start, and its run's base.
    previous = torch.cat([media.new_zeros(1), media[:-1]])
    run_start = torch.where(media & ~previous, index, torch.zeros_like(index)).cummax(0).values
    before = (run_start - 1).clamp(min=0)
    base = torch.where(run_start > 0, mrope_positions[0, before] + 1, torch.zeros_like(run_start))
    # The window's media tokens, in order: the r-th gets row r.
    window = media & (index >= num_computed_tokens)
    rank = torch.cumsum(window.to(torch.long), 0) - 1
    row = rank.clamp(min=0, max=max(n_rows - 1, 0))
    gathered = columns[:, row]  # (3, length)
    target = window & (rank < n_rows) & (gathered[0] >= 0)
    if _PROVISIONAL_POSITIONS_FAULT:  # test only (TEST_ONLY_FAULT_ENV)
        target = torch.zeros_like(target)
    positions = torch.where(target.unsqueeze(0), gathered + base.unsqueeze(0), mrope_positions)
    delta = int(positions.max()) + 1 - positions.shape[1]
    return stripped, positions, delta
