# SPDX-License-Identifier: Apache-2.0
"""The picture of ``explain`` and the playground page, without a server.

:func:`mipruner_vllm.explain.draw_kept` keeps the kept cells' pixels and dims the others (a
video is a strip of its grid's frames); the playground page references nothing outside itself
and its policy allows exactly its own script.
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from mipruner_vllm.explain import DIM, HEAT_ALPHA, HEAT_STOPS, _parser, draw_kept, heat_colour
from mipruner_vllm.server import playground

pytestmark = pytest.mark.unit
Image = pytest.importorskip("PIL.Image")


def _white(width: int, height: int):
    return Image.new("RGB", (width, height), (200, 200, 200))


def test_kept_cells_keep_their_pixels_and_pruned_ones_are_dimmed() -> None:
    item = {"grid": [1, 2, 4], "kept": [0, 5], "visual_tokens": 8, "visual_tokens_kept": 2}
    picture = draw_kept([_white(80, 40)], item)
    assert picture.size == (80, 40)  # no caption: no text band
    kept_centre, pruned_centre = picture.getpixel((10, 10)), picture.getpixel((30, 10))
    assert kept_centre == (200, 200, 200)
    assert all(abs(channel - 200 * DIM) <= 1 for channel in pruned_centre)
    assert picture.getpixel((30, 30)) == (200, 200, 200)  # index 5: row 1, column 1


def test_a_video_is_a_strip_and_the_caption_goes_under_it() -> None:
    item = {"grid": [2, 1, 2], "kept": [1, 2], "visual_tokens": 4, "visual_tokens_kept": 2}
    picture = draw_kept([_white(40, 20), _white(40, 20)], item, caption="A: a cat")
    assert picture.width == 40 + 6 + 40 and picture.height > 20
    assert picture.getpixel((30, 10)) == (200, 200, 200)  # frame 0, column 1 kept
    assert picture.getpixel((10, 10))[0] < 100  # frame 0, column 0 pruned
    assert picture.getpixel((46 + 10, 10)) == (200, 200, 200)  # frame 1, column 0 kept


def test_items_without_grid_or_indices_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no single grid"):
        draw_kept([_white(8, 8)], {"grid": None, "kept": [0]})
    with pytest.raises(ValueError, match="over the bound"):
        draw_kept([_white(8, 8)], {"grid": [1, 1, 1], "kept": None, "omitted": "over the bound"})
    with pytest.raises(ValueError, match="2 frames, got 1"):
        draw_kept([_white(8, 8)], {"grid": [2, 1, 1], "kept": [0]})


def test_heat_overlay_shades_every_cell_by_its_score_and_outlines_the_kept_ones() -> None:
    """--scores: cells blended with the colour of their min-max scaled score (blue low, yellow
    middle, red high), nothing dimmed, the kept cell outlined."""
    assert [heat_colour(x) for x in (0.0, 0.5, 1.0)] == list(HEAT_STOPS)
    assert heat_colour(-3) == HEAT_STOPS[0] and heat_colour(7) == HEAT_STOPS[2]
    item = {
        "grid": [1, 1, 3],
        "kept": [2],
        "scores": [-4.0, 1.0, 6.0],  # scaled: 0, 0.5, 1
        "visual_tokens": 3,
        "visual_tokens_kept": 1,
    }
    picture = draw_kept([_white(90, 30)], item, heat=True)

    def blended(colour):
        return tuple(round(200 * (1 - HEAT_ALPHA) + c * HEAT_ALPHA) for c in colour)

    for cell, colour in enumerate(HEAT_STOPS):
        centre = picture.getpixel((15 + 30 * cell, 15))
        assert all(abs(a - b) <= 1 for a, b in zip(centre, blended(colour), strict=True)), cell
    assert picture.getpixel((60, 15)) == (255, 196, 0)  # the kept cell's outline
    assert picture.getpixel((30, 15)) != (255, 196, 0)  # a pruned cell has none
    plain = draw_kept([_white(90, 30)], item)  # without heat: as before, scores ignored
    assert all(abs(c - 200 * DIM) <= 1 for c in plain.getpixel((15, 15)))
    with pytest.raises(ValueError, match="ranks by no score"):
        draw_kept(
            [_white(8, 8)],
            {"grid": [1, 1, 1], "kept": [0], "scores": None, "scores_omitted": "ranks by no score"},
            heat=True,
        )
    args = vars(_parser().parse_args(["x.png", "-q", "why?", "--scores"]))
    assert args["scores"] is True and "pruning_detail_scores" not in args


def test_playground_page_is_self_contained_and_its_policy_allows_only_its_script() -> None:
    page = playground.PAGE.decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in playground.CONTENT_SECURITY_POLICY
    for method in ("mi", "divprune", "random"):
        assert f'<option value="{method}"' in page
