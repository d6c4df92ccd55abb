# SPDX-License-Identifier: Apache-2.0
"""The trained demo's task: deterministic scenes, one answer per question, the JSONL it writes
(read back by eval-sweep's loader), the ``demo-data`` command."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from mipruner_vllm.cli import app
from mipruner_vllm.demo_model import task
from mipruner_vllm.evaluation.data import load_items

pytestmark = pytest.mark.unit


def _png_digest(seed: int, index: int) -> str:
    return hashlib.sha256(task.draw(task.make_scene(seed, index)).tobytes()).hexdigest()


def test_scenes_are_a_function_of_seed_and_index():
    assert task.make_scene(1, 7) == task.make_scene(1, 7)
    assert _png_digest(1, 7) == _png_digest(1, 7)
    # Different splits and different indices give different scenes.
    assert task.make_scene(0, 7) != task.make_scene(1, 7)
    assert len({task.make_scene(1, i) for i in range(50)}) == 50


def test_every_question_has_exactly_one_answer():
    for index in range(200):
        scene = task.make_scene(task.HELD_OUT_SEED, index)
        objects = scene.objects
        assert len({o.shape for o in objects}) == len({o.color for o in objects}) == 3
        assert len({(o.row, o.col) for o in objects}) == 3
        for obj in objects:
            assert task.question("color", obj) == (f"What color is the {obj.shape}?", obj.color)
            assert task.question("shape", obj) == (f"What shape is the {obj.color} one?", obj.shape)
            _, where = task.question("position", obj)
            assert where == ("top" if obj.row < 2 else "bottom")


def test_every_answer_finishes_within_the_answer_token_budget():
    # The accuracy test and the documented sweep send max_tokens=MAX_ANSWER_TOKENS: an answer
    # cut short reads as a wrong answer (a budget of 4 cut "triangle" to "triang").
    transformers = pytest.importorskip("transformers")

    from mipruner_vllm.demo_model import trained_demo_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(trained_demo_model())
    answers = {*task.COLORS, *task.SHAPES, "top", "bottom"}
    # As generated: after the generation prompt's newline, then the end-of-turn token.
    counts = {a: len(tokenizer("\n" + a + tokenizer.eos_token)["input_ids"]) - 1 for a in answers}
    assert max(counts.values()) == task.MAX_ANSWER_TOKENS, counts


def test_each_object_is_drawn_inside_its_own_cell():
    """One object per 28-px cell, i.e. per merged visual token of the demo model."""
    for index in range(20):
        scene = task.make_scene(0, index)
        image = task.draw(scene)
        for obj in scene.objects:
            x0, y0 = obj.col * task.CELL, obj.row * task.CELL
            cell = image.crop((x0, y0, x0 + task.CELL, y0 + task.CELL))
            colors = {c for _, c in cell.getcolors(task.CELL * task.CELL)}
            assert task.COLORS[obj.color] in colors
        # Nothing is drawn outside the three cells.
        occupied = {(o.row, o.col) for o in scene.objects}
        for row in range(task.GRID):
            for col in range(task.GRID):
                if (row, col) in occupied:
                    continue
                x0, y0 = col * task.CELL, row * task.CELL
                cell = image.crop((x0, y0, x0 + task.CELL, y0 + task.CELL))
                assert cell.getcolors() == [(task.CELL * task.CELL, task.BACKGROUND)]


def test_unknown_question_kind_is_refused():
    obj = task.make_scene(0, 0).objects[0]
    with pytest.raises(ValueError, match="unknown question kind 'size'"):
        task.question("size", obj)
    with pytest.raises(ValueError, match="color, shape, position"):
        task.item_kinds("color,size")


def test_written_items_load_in_eval_sweep_format(tmp_path):
    jsonl = task.write_items(tmp_path, seed=1, n_items=9, kinds=("color", "shape"))
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["color", "shape"] * 4 + ["color"]
    items = load_items(jsonl)
    assert [i.id for i in items] == [f"s1-{i:05d}" for i in range(9)]
    assert all(i.images[0].startswith("data:image/png;base64,") for i in items)
    first = task.make_scene(1, 0).objects[0]
    assert items[0].question == f"What color is the {first.shape}?"
    assert items[0].answers == (first.color,)
    # The same command writes the same bytes.
    again = task.write_items(tmp_path / "again", seed=1, n_items=9, kinds=("color", "shape"))
    assert again.read_bytes() == jsonl.read_bytes()
    assert (tmp_path / "images" / "1-00004.png").read_bytes() == (
        tmp_path / "again" / "images" / "1-00004.png"
    ).read_bytes()


def test_demo_data_command(tmp_path):
    result = CliRunner().invoke(
        app, ["demo-data", "--out", str(tmp_path), "--seed", "3", "--n", "4"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "items.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == [
        "color",
        "shape",
        "position",
        "color",
    ]
    bad = CliRunner().invoke(app, ["demo-data", "--out", str(tmp_path), "--kinds", "size"])
    assert bad.exit_code != 0 and "--kinds" in bad.output
