# SPDX-License-Identifier: Apache-2.0
"""The encoder path of the model mixin without an engine: store, dedupe, bounded tower calls,
failure isolation.

A fake tower stands in for the vision model: it records every call (items and unpruned tokens)
and returns deterministic embeddings per item, so the tests see exactly when the tower runs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mipruner_vllm import resolve_params
from mipruner_vllm.integration.fields import (
    content_field,
    decode_content_keys,
    encode_content_key,
    encode_params,
    params_field,
    text_field,
)
from mipruner_vllm.integration.models.common import MIPrunerModelMixin
from mipruner_vllm.integration.store import EncoderStore, item_nbytes
from mipruner_vllm.metrics import ENCODER_STORE_EVICTIONS, ENCODER_STORE_HITS, SELECTION_FALLBACKS
from mipruner_vllm.pruning.encoder_batch import (
    BatchLayout,
    EncodedItem,
    plan_tower_calls,
    slice_batch,
    uniform_fallback,
)
from mipruner_vllm.pruning.reference import uniform_stride

pytestmark = pytest.mark.unit

HIDDEN = 16


def _embeds(seed: int, rows: int) -> torch.Tensor:
    return torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed))


class _Tower(MIPrunerModelMixin):
    """Items are ``seed`` ids in ``pixel_values`` (one row per item, stacked); item i has
    ``rows[i]`` visual tokens whose embeddings depend only on the seed."""

    mipruner_modalities = ("image",)

    def __init__(self, store_bytes: int, limit: int, poison: set[int] | None = None) -> None:
        self.mipruner_store = EncoderStore(store_bytes)
        self._mipruner_tower_limit = limit
        self.calls: list[list[int]] = []
        self.poison = poison or set()
        self.table = _embeds(99, 50)

    def _mipruner_layout(self, kwargs: dict[str, Any]) -> BatchLayout:
        return BatchLayout("image", [int(r) for r in kwargs["rows"].tolist()])

    def _mipruner_encode(self, **kwargs: Any) -> list[EncodedItem]:
        seeds = [int(s) for s in kwargs["pixel_values"].tolist()]
        rows = [int(r) for r in kwargs["rows"].tolist()]
        self.calls.append(seeds)
        out = []
        for seed, n in zip(seeds, rows, strict=True):
            emb = _embeds(seed, n)
            if seed in self.poison:
                emb[n // 2] = float("nan")
            out.append(EncodedItem("image", emb, HIDDEN))
        return out

    def _mipruner_embed_texts(
        self, ids: list[torch.Tensor], visuals: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return [self.table[i] for i in ids]


def _batch(
    seeds: list[int], rows: list[int], questions: list[list[int]], keep_ratio: float = 0.25
) -> dict:
    params = resolve_params(keep_ratio=keep_ratio)
    return {
        "pixel_values": torch.tensor(seeds),
        "rows": torch.tensor(rows),
        params_field("image"): torch.stack([encode_params(params)] * len(seeds)),
        text_field("image"): [torch.tensor(q, dtype=torch.long) for q in questions],
        content_field("image"): torch.stack([encode_content_key(f"media-{s}") for s in seeds]),
    }


def _counter(metric: Any, **labels: str) -> float:
    return metric.labels(**labels)._value.get() if labels else metric._value.get()


def test_content_keys_travel_as_fixed_size_vectors() -> None:
    keys = torch.stack(
        [encode_content_key("abc"), encode_content_key(None), encode_content_key("abd")]
    )
    decoded = decode_content_keys(keys, 3)
    assert decoded[1] is None  # all zeros: never stored (profiling dummies, client uuids)
    assert decoded[0] != decoded[2] and len(decoded[0]) == 32


def test_store_is_an_lru_under_a_byte_budget() -> None:
    item = EncodedItem("image", _embeds(0, 10), HIDDEN)
    size = item_nbytes(item)
    store = EncoderStore(3 * size)
    evictions = [
        store.put(bytes([i]) * 32, EncodedItem("image", _embeds(i, 10), HIDDEN)) for i in range(3)
    ]
    assert evictions == [0, 0, 0] and store.bytes == 3 * size
    assert store.get(bytes([0]) * 32) is not None  # 0 is now the most recent
    assert store.put(bytes([3]) * 32, item) == 1  # evicts 1, the least recently used
    assert bytes([1]) * 32 not in store and bytes([0]) * 32 in store
    assert store.bytes == 3 * size and len(store) == 3
    # A hit is a bit-identical copy that owns its memory.
    hit = store.get(bytes([2]) * 32)
    assert torch.equal(hit.embeds, _embeds(2, 10))
    hit.embeds.zero_()
    assert torch.equal(store.get(bytes([2]) * 32).embeds, _embeds(2, 10))
    # Another expected size is a miss (row-count invariant), and the entry is dropped.
    assert store.get(bytes([2]) * 32, tag=11) is None and bytes([2]) * 32 not in store
    # Too large for the whole budget, or a disabled store: nothing is kept.
    assert (
        store.put(b"x" * 32, EncodedItem("image", _embeds(0, 40), HIDDEN)) == 0
        and b"x" * 32 not in store
    )
    disabled = EncoderStore(0)
    disabled.put(b"y" * 32, item)
    assert len(disabled) == 0 and not disabled.enabled


def test_slice_batch_keeps_flat_and_per_item_layouts() -> None:
    layout = BatchLayout("image", [1, 2, 3], flat_rows=[4, 8, 12])
    kwargs = {
        "pixel_values": torch.arange(24).reshape(24, 1),
        "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 4], [1, 3, 4]]),
        "listed": ["a", "b", "c"],
        "shared": 5,
    }
    sub = slice_batch(kwargs, layout, [0, 2])
    assert sub["pixel_values"].reshape(-1).tolist() == list(range(4)) + list(range(12, 24))
    assert sub["image_grid_thw"].tolist() == [[1, 2, 2], [1, 3, 4]]
    assert sub["listed"] == ["a", "c"] and sub["shared"] == 5


def test_tower_calls_never_exceed_the_limit() -> None:
    costs = [4, 4, 4, 9, 1, 1]
    calls = plan_tower_calls(costs, list(range(6)), limit=8)
    assert calls == [[0, 1], [2], [3], [4, 5]]  # 9 > 8 runs alone, as vLLM profiled one such item
    assert all(sum(costs[i] for i in call) <= 8 for call in calls if len(call) > 1)
    assert plan_tower_calls(costs, [0, 1, 2], limit=0) == [[0, 1, 2]]


def test_follow_up_hits_the_store_and_selects_for_its_own_question() -> None:
    model = _Tower(store_bytes=1 << 20, limit=0)
    hits = _counter(ENCODER_STORE_HITS, engine="0", modality="image")
    first = model.embed_multimodal(**_batch([1], [16], [[3, 4]]))
    follow_up = model.embed_multimodal(**_batch([1], [16], [[20, 21, 22]]))
    assert model.calls == [[1]]  # the tower ran for the first question only
    assert _counter(ENCODER_STORE_HITS, engine="0", modality="image") == hits + 1
    # The follow-up equals what a fresh model (empty store) gives for the same request.
    fresh = _Tower(store_bytes=0, limit=0).embed_multimodal(**_batch([1], [16], [[20, 21, 22]]))
    assert torch.equal(follow_up[0], fresh[0])
    assert first[0].shape == follow_up[0].shape == (4, HIDDEN)


def test_same_content_in_one_batch_runs_the_tower_once_with_two_selections() -> None:
    model = _Tower(store_bytes=0, limit=0)  # dedupe does not need the store
    out = model.embed_multimodal(**_batch([5, 5], [16, 16], [[1, 2], [30, 31, 32]]))
    assert model.calls == [[5]]
    alone = [
        _Tower(0, 0).embed_multimodal(**_batch([5], [16], [q]))[0] for q in ([1, 2], [30, 31, 32])
    ]
    assert torch.equal(out[0], alone[0]) and torch.equal(out[1], alone[1])
    assert not torch.equal(out[0], out[1])  # each question got its own selection


def test_eviction_under_a_tiny_budget() -> None:
    one = item_nbytes(EncodedItem("image", _embeds(0, 16), HIDDEN))
    model = _Tower(store_bytes=2 * one, limit=0)
    evictions = _counter(ENCODER_STORE_EVICTIONS, engine="0")
    for seed in (1, 2, 3):
        model.embed_multimodal(**_batch([seed], [16], [[1]]))
    assert _counter(ENCODER_STORE_EVICTIONS, engine="0") == evictions + 1
    model.embed_multimodal(**_batch([1], [16], [[2]]))  # evicted: the tower runs again
    model.embed_multimodal(**_batch([3], [16], [[2]]))  # still stored
    assert model.calls == [[1], [2], [3], [1]]


def test_many_items_at_a_low_keep_ratio_are_split_and_equal_the_unsplit_outputs() -> None:
    seeds, rows = list(range(10, 22)), [16] * 12
    questions = [[i % 7, 1 + i % 5] for i in range(12)]
    split = _Tower(store_bytes=0, limit=40)
    out = split.embed_multimodal(**_batch(seeds, rows, questions, keep_ratio=0.1))
    assert all(sum(16 for _ in call) <= 40 for call in split.calls) and len(split.calls) == 6
    assert sorted(s for call in split.calls for s in call) == seeds
    whole = _Tower(store_bytes=0, limit=0)
    reference = whole.embed_multimodal(**_batch(seeds, rows, questions, keep_ratio=0.1))
    assert len(whole.calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(out, reference, strict=True))


def test_non_finite_item_falls_back_and_the_rest_of_the_batch_is_selected_normally() -> None:
    model = _Tower(store_bytes=0, limit=0, poison={8})
    before = _counter(SELECTION_FALLBACKS, reason="non_finite")
    out = model.embed_multimodal(**_batch([7, 8, 9], [16, 16, 16], [[1, 2], [1, 2], [3]]))
    assert _counter(SELECTION_FALLBACKS, reason="non_finite") == before + 1
    assert [o.shape[0] for o in out] == [4, 4, 4]
    poisoned = _embeds(8, 16)
    poisoned[8] = float("nan")
    torch.testing.assert_close(
        out[1], poisoned[uniform_stride(16, 4)], rtol=0, atol=0, equal_nan=True
    )
    clean = [
        _Tower(0, 0).embed_multimodal(**_batch([s], [16], [q]))[0]
        for s, q in ((7, [1, 2]), (9, [3]))
    ]
    assert torch.equal(out[0], clean[0]) and torch.equal(out[2], clean[1])


def test_uniform_fallback_keeps_the_processor_budget() -> None:
    params = resolve_params(keep_ratio=0.3)
    assert (
        uniform_fallback(20, 1, params).tolist() == uniform_stride(20, params.n_keep(20)).tolist()
    )
    kept = uniform_fallback(24, 3, params)
    shares = params.n_keep_per_frame(3, 8)
    assert [int(((kept // 8) == f).sum()) for f in range(3)] == shares


def test_store_budget_is_a_setting_and_a_server_flag(clean_settings: Any) -> None:
    import argparse
    import os

    from pydantic import ValidationError

    from mipruner_vllm.config import MiprunerSettings, get_settings
    from mipruner_vllm.server.flags import add_pruning_args, export_pruning_defaults

    assert (
        MiprunerSettings().encoder_store_bytes == 1 << 30
        and MiprunerSettings().encoder_store_device == "cpu"
    )
    with pytest.raises(ValidationError, match="encoder_store_bytes"):
        MiprunerSettings(encoder_store_bytes=-1)
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    try:
        export_pruning_defaults(parser.parse_args(["--encoder-store-bytes", "4096"]))
        assert os.environ["MIPRUNER_ENCODER_STORE_BYTES"] == "4096"
        assert get_settings().encoder_store_bytes == 4096
        with pytest.raises(ValueError, match="--encoder-store-bytes"):
            export_pruning_defaults(parser.parse_args(["--encoder-store-bytes", "-5"]))
    finally:
        os.environ.pop("MIPRUNER_ENCODER_STORE_BYTES", None)
        get_settings.cache_clear()


def test_positions_that_cannot_be_carried_keep_their_provisional_values() -> None:
    from mipruner_vllm.integration.mrope import (
        KEEP_PROVISIONAL,
        POSITION_COLUMNS,
        POSITION_LIMIT,
        encode_positions,
        recompute_media_positions,
    )

    media = 9
    ids = [1, 2, media, media, media, 3, media, media, 4]
    provisional = torch.arange(len(ids)).repeat(3, 1) * 10
    rows = [torch.zeros(3, 4), torch.zeros(2, 4)]
    ok = torch.cat(
        [rows[0], encode_positions(torch.tensor([[0, 0, 1], [0, 1, 0], [0, 1, 1]]), torch.float32)],
        1,
    )
    marked = torch.cat([rows[1], torch.full((2, POSITION_COLUMNS), KEEP_PROVISIONAL)], 1)
    stripped, positions, _ = recompute_media_positions(ids, [ok, marked], provisional, 0, [media])
    assert [s.shape for s in stripped] == [(3, 4), (2, 4)]
    base = int(provisional[0, 1]) + 1  # one past the text token before the first run
    assert positions[:, 2:5].T.tolist() == [
        [base, base, base + 1],
        [base, base + 1, base],
        [base, base + 1, base + 1],
    ]
    assert torch.equal(positions[:, 6:8], provisional[:, 6:8])  # marked rows: untouched
    assert torch.equal(positions[:, [0, 1, 5, 8]], provisional[:, [0, 1, 5, 8]])  # text: untouched

    # The model side sends the marker (and counts the item) instead of raising.
    item = EncodedItem(
        "image",
        _embeds(0, 4),
        HIDDEN,
        positions=torch.tensor([[0, 0, 0], [0, 0, POSITION_LIMIT]] * 2),
    )
    before = _counter(SELECTION_FALLBACKS, reason="position_overflow")
    columns = MIPrunerModelMixin._mipruner_position_columns(
        item, torch.tensor([1, 3]), item.embeds[:2]
    )
    assert torch.equal(columns, torch.full((2, POSITION_COLUMNS), KEEP_PROVISIONAL))
    assert _counter(SELECTION_FALLBACKS, reason="position_overflow") == before + 1
