# SPDX-License-Identifier: Apache-2.0
"""Selection of items whose frames have their own budgets (Qwen3-VL video), without an engine.

``MIPrunerModelMixin._mipruner_select_frames`` is the worker's one batched call: plain items are
selected as a whole, a video of T frames is selected frame by frame with the frame's share of the
video budget (``PruningParams.n_keep_per_frame``), all in the same call.
"""

from __future__ import annotations

import pytest
import torch

from mipruner_vllm import resolve_params, select_tokens
from mipruner_vllm.integration.models.common import MIPrunerModelMixin

pytestmark = pytest.mark.unit

select_frames = MIPrunerModelMixin._mipruner_select_frames


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
    video_kept, image_kept = select_frames([frames, 1], [video, image], [text, text], [params, params])

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
