# SPDX-License-Identifier: Apache-2.0
"""Pure-torch checks of the M-RoPE bookkeeping for pruned Qwen media (no engine).

These pin the two properties the engine tests can only observe indirectly: with nothing pruned
the positions are exactly stock vLLM's (Qwen2-VL's own ``get_mrope_input_positions``), and the
per-chunk recompute gives the same result however the prefill is chunked or how much of the
prompt came from the prefix cache.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mipruner_vllm.integration.mrope import (
    POSITION_COLUMNS,
    decode_positions,
    encode_positions,
    grid_positions,
    pruned_mrope_input_positions,
    recompute_media_positions,
)

pytestmark = [pytest.mark.vllm]

IMG, VID, START, END = 90, 91, 88, 89


def _prompt(items: list[tuple[int, int]], text: int = 5) -> tuple[list[int], list[int]]:
    """Token ids ``text, START, media*n, END, text, ...`` and the media offsets."""
    ids, offsets = [1] * text, []
    for token, n in items:
        ids.append(START)
        offsets.append(len(ids))
        ids += [token] * n + [END] + [1] * text
    return ids, offsets


def _stock_positions(ids: list[int], grids: list[tuple[int, int, int, int, float]]) -> tuple[torch.Tensor, int]:
    from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration

    fake = SimpleNamespace(iter_mm_grid_thw=lambda _features: iter(grids))
    return Qwen2VLForConditionalGeneration.get_mrope_input_positions(fake, ids, [])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "shapes",
    [
        [(1, 4, 4, 1.0)],
        [(1, 8, 2, 1.0)],  # tall: text continues from max(h) + 1, not from w (memo B2)
        [(1, 2, 8, 1.0), (2, 4, 4, 2.0)],  # wide image, then a 2-step video with t_factor 2
    ],
)
def test_unpruned_positions_equal_stock(shapes: list[tuple[int, int, int, float]]) -> None:
    pytest.importorskip("vllm")
    ids, offsets = _prompt([(IMG if t == 1 else VID, t * h * w) for t, h, w, _ in shapes])
    grids = [(off, t, h, w, f) for off, (t, h, w, f) in zip(offsets, shapes, strict=True)]
    ours, delta = pruned_mrope_input_positions(iter(grids), [t * h * w for t, h, w, _ in shapes], len(ids))
    stock, stock_delta = _stock_positions(ids, grids)
    assert torch.equal(ours, stock.long())
    assert delta == stock_delta


def test_position_columns_round_trip_in_bfloat16() -> None:
    positions = torch.tensor([[0, 0, 0], [3, 255, 256], [1000, 4095, 65535]])
    cols = encode_positions(positions, torch.bfloat16)
    assert cols.shape == (3, POSITION_COLUMNS)
    assert torch.equal(decode_positions(cols).T, positions)


def _pruned_case() -> tuple[list[int], list[tuple[int, int, int, int, float]], list[torch.Tensor]]:
    """Two items (image 4x4 keeping 5 tokens, video 2x2x2 keeping 3) and their embeddings."""
    kept = [torch.tensor([0, 3, 6, 10, 15]), torch.tensor([1, 4, 7])]
    ids, offsets = _prompt([(IMG, 5), (VID, 3)])
    grids = [(offsets[0], 1, 4, 4, 1.0), (offsets[1], 2, 2, 2, 1.0)]
    embeds = []
    for (t, h, w), sel in zip([(1, 4, 4), (2, 2, 2)], kept, strict=True):
        pos = grid_positions(t, h, w)[sel]
        emb = torch.randn(len(sel), 8)
        embeds.append(torch.cat([emb, encode_positions(pos, emb.dtype)], dim=1))
    return ids, grids, embeds


def test_recompute_is_independent_of_chunking_and_cache_hits() -> None:
    ids, grids, embeds = _pruned_case()
    init, delta = pruned_mrope_input_positions(iter(grids), [5, 3], len(ids))
    media = [i for i, t in enumerate(ids) if t in (IMG, VID)]
    whole, positions, whole_delta = recompute_media_positions(ids, embeds, init, 0, (IMG, VID))
    assert whole_delta == delta  # text and the decode offset are final before any recompute
    assert all(torch.equal(a, b[:, :8]) for a, b in zip(whole, embeds, strict=True))
    # Kept tokens sit at their original grid positions relative to the item's base.
    first = media[0]
    base = int(positions[0, first - 1]) + 1
    assert positions[:, first : first + 5].tolist() == (grid_positions(1, 4, 4)[[0, 3, 6, 10, 15]].T + base).tolist()
    # Text never moves.
    text = [i for i in range(len(ids)) if i not in media]
    assert torch.equal(positions[:, text], init[:, text])

    # Every chunking of the prefill (the runner hands over the rows of each window) gives the same.
    for chunk in range(1, len(ids) + 1):
        state = init.clone()
        for start in range(0, len(ids), chunk):
            end = min(start + chunk, len(ids))
            window = []
            for (off, *_), emb, n in zip(grids, embeds, (5, 3), strict=True):
                lo, hi = max(start - off, 0), min(end - off, n)
                if lo < hi:
                    window.append(emb[lo:hi])
            _, state, _ = recompute_media_positions(ids, window, state, start, (IMG, VID))
        assert torch.equal(state, positions), chunk

    # A prefix-cache hit covering the first item: only the second is recomputed, the result for
    # the uncached part is the same.
    cached = grids[1][0] - 1
    _, state, _ = recompute_media_positions(ids, [embeds[1]], init.clone(), cached, (IMG, VID))
    assert torch.equal(state[:, cached:], positions[:, cached:])
