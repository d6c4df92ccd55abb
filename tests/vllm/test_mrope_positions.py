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


def _stock_positions(
    ids: list[int], grids: list[tuple[int, int, int, int, float]]
) -> tuple[torch.Tensor, int]:
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
    ours, delta = pruned_mrope_input_positions(
        iter(grids), [t * h * w for t, h, w, _ in shapes], len(ids)
    )
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
    assert (
        positions[:, first : first + 5].tolist()
        == (grid_positions(1, 4, 4)[[0, 3, 6, 10, 15]].T + base).tolist()
    )
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


def _qwen3_video_prompt(pads: list[int], text: int = 5) -> tuple[list[int], SimpleNamespace]:
    """``text, (<t seconds> START video*n END) per frame, text`` and the video's feature."""
    ids = [1] * text
    offset = len(ids)
    for frame, n in enumerate(pads):
        ids += [20 + frame, 30] + [START] + [VID] * n + [END]  # timestamp text, then the frame
    length = len(ids) - offset
    ids += [1] * text
    grid = torch.tensor([len(pads), 8, 8])  # 8x8 patches, merge 2: 16 tokens per frame
    feature = SimpleNamespace(
        modality="video",
        mm_position=SimpleNamespace(offset=offset, length=length),
        data={"video_grid_thw": SimpleNamespace(data=grid)},
    )
    return ids, feature


def test_qwen3_pruned_video_keeps_stock_positions_of_every_kept_token() -> None:
    """A Qwen3-VL video pruned per frame: every remaining token sits where stock vLLM puts it.

    Stock positions of the unpruned prompt, restricted to the timestamp/text tokens and the kept
    video tokens, must equal the pruned prompt's positions (whatever the prefill chunking), and
    decoding continues from the same position.
    """
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    from mipruner_vllm.integration.models.qwen3_vl import MIPrunerQwen3VLForConditionalGeneration

    config = SimpleNamespace(
        video_token_id=VID,
        vision_start_token_id=START,
        vision_end_token_id=END,
        vision_config=SimpleNamespace(spatial_merge_size=2),
    )
    frames, per_frame = 3, 16
    full_ids, full_feature = _qwen3_video_prompt([per_frame] * frames)
    stock, _ = Qwen3VLForConditionalGeneration._get_mrope_input_positions(
        full_ids, [full_feature], config
    )

    kept_per_frame = [[0, 5, 15], [3, 4], [9, 10]]  # frame-local indices (budgets 3, 2, 2)
    ids, feature = _qwen3_video_prompt([len(k) for k in kept_per_frame])
    fake_model = SimpleNamespace(config=config)
    init, delta = MIPrunerQwen3VLForConditionalGeneration.get_mrope_input_positions(
        fake_model, ids, [feature]
    )

    # The model's rows: kept tokens in order, positions (0, h, w) relative to their frame's run.
    frame_grid = grid_positions(1, 4, 4)
    positions = torch.cat([frame_grid[k] for k in kept_per_frame])
    rows = torch.cat(
        [torch.randn(len(positions), 8), encode_positions(positions, torch.float32)], dim=1
    )
    _, whole, whole_delta = recompute_media_positions(ids, [rows], init, 0, (IMG, VID))

    # Which tokens of the unpruned prompt remain: all non-video tokens and the kept video tokens.
    remain, seen = [], 0
    for token in full_ids:
        if token == VID:
            frame, local = divmod(seen, per_frame)
            remain.append(local in kept_per_frame[frame])
            seen += 1
        else:
            remain.append(True)
    assert torch.equal(whole, stock.long()[:, torch.tensor(remain)])
    assert whole_delta == delta == int(stock.max()) + 1 - len(ids)

    # Same result under every prefill chunking (the runner hands over the rows inside each window).
    media = [i for i, token in enumerate(ids) if token == VID]
    for chunk in (1, 4, 7, 32):
        state = init.clone()
        for start in range(0, len(ids), chunk):
            inside = [r for r, i in enumerate(media) if start <= i < start + chunk]
            window = [rows[inside[0] : inside[-1] + 1]] if inside else []
            _, state, _ = recompute_media_positions(ids, window, state, start, (IMG, VID))
        assert torch.equal(state, whole), chunk
