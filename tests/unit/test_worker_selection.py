# SPDX-License-Identifier: Apache-2.0
"""The worker-side selection of the model mixin, without an engine.

``pruning.encoder_batch.select_frames`` is the worker's one batched call: plain items are
selected as a whole, a video of T frames is selected frame by frame with the frame's share of the
video budget (``PruningParams.n_keep_per_frame``), all in the same call.
``select_with_fallback`` gives an item that cannot be selected the uniform stride.
``MIPrunerModelMixin._mipruner_select`` scores on the first ``score_dim`` columns and returns
whole rows, so Qwen3-VL's deepstack columns follow the kept indices.
"""

from __future__ import annotations

import pytest
import torch

from mipruner_vllm import resolve_params, select_tokens
from mipruner_vllm.integration.fields import encode_params
from mipruner_vllm.integration.models.common import EncodedItem, MIPrunerModelMixin
from mipruner_vllm.pruning import encoder_batch

pytestmark = pytest.mark.unit


def select_frames(*args):
    """Each item's selected rows (the mixin also reports the backends: see the last test)."""
    return encoder_batch.select_frames(*args).indices


def _item(rows: int, hidden: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, hidden, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "budget",
    [
        {"keep_ratio": 0.25, "method": "mi"},
        {"keep_tokens": 5, "method": "mi", "mi_lambda": 0.5},
        {"keep_ratio": 0.3, "method": "trimtokenator"},
        {"keep_ratio": 0.3, "method": "divprune"},
    ],
)
def test_frames_are_selected_with_their_share_of_the_video_budget(budget: dict) -> None:
    frames, per_frame = 3, 12
    video, image = _item(frames * per_frame, seed=1), _item(20, seed=2)
    text = _item(4, seed=3)
    params = resolve_params(**budget)
    video_kept, image_kept = select_frames(
        [frames, 1], [video, image], [text, text], [params, params]
    )

    # A plain item next to it is selected exactly as on its own.
    assert torch.equal(image_kept, select_tokens(image, text, **budget))
    # The video: frame f keeps its share of n_keep(T*P), chosen among its own rows only,
    # exactly as a selection of that frame with that absolute budget.
    shares = params.n_keep_per_frame(frames, per_frame)
    assert len(video_kept) == sum(shares) == params.n_keep(frames * per_frame)
    assert video_kept.tolist() == sorted(set(video_kept.tolist()))
    for frame, share in enumerate(shares):
        rows = video[frame * per_frame : (frame + 1) * per_frame]
        own = video_kept[(video_kept >= frame * per_frame) & (video_kept < (frame + 1) * per_frame)]
        other = {k: v for k, v in budget.items() if k not in ("keep_ratio", "keep_tokens")}
        expected = select_tokens(rows, text, keep_tokens=share, **other) + frame * per_frame
        assert torch.equal(own, expected), frame


def test_random_baseline_draws_each_frame_anew() -> None:
    frames, per_frame = 4, 16
    params = resolve_params(keep_ratio=0.25, method="random", seed=7)
    kept = select_frames([frames], [_item(frames * per_frame)], [_item(2)], [params])[0]
    local = [tuple((kept[(kept // per_frame) == f] % per_frame).tolist()) for f in range(frames)]
    assert all(len(pattern) == 4 for pattern in local)
    assert len(set(local)) > 1, "frames must not repeat one random pattern"
    again = select_frames([frames], [_item(frames * per_frame)], [_item(2)], [params])[0]
    assert torch.equal(kept, again)  # deterministic for a given seed


def test_rows_that_do_not_split_into_frames_are_an_error() -> None:
    with pytest.raises(ValueError, match="do not split into 3 equal frames"):
        select_frames([3], [_item(10)], [_item(2)], [resolve_params(keep_ratio=0.5)])


class _Model(MIPrunerModelMixin):
    """The mixin with a fixed query embedding table instead of an LLM."""

    mipruner_modalities = ("image", "video")

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def _mipruner_embed_texts(
        self, ids: list[torch.Tensor], visuals: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return [self.table[i] for i in ids]


def test_deepstack_columns_follow_the_kept_rows_and_are_not_scored() -> None:
    hidden, levels = 16, 2
    table = _item(50, hidden, seed=5)
    question = torch.tensor([3, 17, 42])
    image = _item(24, hidden * (1 + levels), seed=6)  # [main | deepstack 1 | deepstack 2]
    video = _item(2 * 12, hidden * (1 + levels), seed=7)
    params = resolve_params(keep_ratio=0.25)
    fields = {
        "image": (torch.stack([encode_params(params)]), [question]),
        "video": (torch.stack([encode_params(params)]), [question]),
    }
    items = [EncodedItem("image", image, hidden), EncodedItem("video", video, hidden, frames=2)]
    out_image, out_video = _Model(table)._mipruner_select(items, fields)

    expected = select_tokens(image[:, :hidden], table[question], keep_ratio=0.25)
    assert torch.equal(out_image, image[expected])  # whole rows: every deepstack level follows
    expected_video = select_frames([2], [video[:, :hidden]], [table[question]], [params])[0]
    assert torch.equal(out_video, video[expected_video])
    assert out_video.shape == (params.n_keep(24), hidden * (1 + levels))

    # Scores ignore the deepstack columns: changing them changes nothing in the selection.
    noisy = image.clone()
    noisy[:, hidden:] = _item(24, hidden * levels, seed=8)
    again = _Model(table)._mipruner_select(
        [EncodedItem("image", noisy, hidden)], {"image": fields["image"]}
    )[0]
    assert torch.equal(again, noisy[expected])


def test_each_item_reports_the_backend_that_ran_it() -> None:
    """The worker's metrics label comes from the dispatcher: on CPU tensors the torch reference,
    ``none`` for an item that needed no scores (no query text), whatever its frame count."""
    params = resolve_params(keep_ratio=0.25)
    no_text = torch.zeros(0, 16)
    selection = encoder_batch.select_frames(
        [1, 3, 2],
        [_item(20), _item(36, seed=1), _item(24, seed=2)],
        [_item(4), _item(4), no_text],
        [params, params, params],
    )
    assert selection.backends == ["torch", "torch", "none"]
    assert selection.label == "torch"


def test_an_item_that_cannot_be_selected_falls_back_alone() -> None:
    """A NaN item gets the uniform stride (reason ``non_finite``); its batch neighbours keep the
    selection they would get on their own."""
    params = resolve_params(keep_ratio=0.25)
    good, bad, text = _item(20, seed=1), _item(24, seed=2), _item(4, seed=3)
    bad[3, 5] = float("nan")
    selection, reasons = encoder_batch.select_with_fallback(
        [1, 2], [good, bad], [text, text], [params, params]
    )
    assert reasons == [None, "non_finite"]
    assert torch.equal(selection.indices[0], select_tokens(good, text, keep_ratio=0.25))
    assert torch.equal(selection.indices[1], encoder_batch.uniform_fallback(24, 2, params))
    assert selection.backends == ["torch", "torch"]


def test_select_items_keeps_fixed_rows_and_skips_unpruned_items() -> None:
    """``select_items``: always-kept rows are added back in order, never scored; an item whose
    request does not prune (keep_ratio 1) or has no request is left out."""
    hidden = 16
    table = _item(50, hidden, seed=5)
    embeds = _item(12, hidden, seed=6)
    fixed = torch.zeros(12, dtype=torch.bool)
    fixed[[0, 11]] = True
    items = [
        EncodedItem("image", embeds, hidden, fixed=fixed),
        EncodedItem("image", _item(8, hidden), hidden),
        EncodedItem("video", _item(8, hidden), hidden),
    ]
    query = torch.tensor([1, 2, 3])
    requests = [
        encoder_batch.ItemRequest(resolve_params(keep_tokens=4), query),
        encoder_batch.ItemRequest(resolve_params(keep_ratio=1.0), query),
        None,
    ]
    timer = encoder_batch.SelectionTimer(lambda *_: None)
    embed = _Model(table)._mipruner_embed_texts
    chosen = encoder_batch.select_items(items, requests, embed, timer)
    assert list(chosen) == [0]
    expected = select_tokens(embeds[1:11], table[query], keep_tokens=4) + 1
    assert torch.equal(chosen[0].selected + 1, expected)
    assert chosen[0].kept.tolist() == sorted([0, 11, *expected.tolist()])
    assert chosen[0].n_visual == 10 and chosen[0].fallback is None


def test_store_plan_encodes_each_missing_content_once() -> None:
    stored = {b"a": "A"}
    plan = encoder_batch.plan_store_lookups(
        [b"a", b"b", None, b"b", b"a"], [1, 1, 1, 1, 1], lambda key, _: stored.get(key)
    )
    assert plan.results == ["A", None, None, None, None]
    assert plan.todo == [1, 2]
    assert plan.copies == [(3, 1), (4, 0)]
    assert (plan.hits, plan.misses) == (3, 1)
