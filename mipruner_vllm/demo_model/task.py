# SPDX-License-Identifier: Apache-2.0
"""The trained demo's task: coloured shapes on a grid, and questions about them.

Every image is 112 x 112 px, a 4 x 4 grid of 28-px cells. On the Qwen2.5-VL demo checkpoints
(14-px patches, 2 x 2 merge) one cell is exactly one merged visual token, so the image is 16
visual tokens and each object sits in one of them. An image holds three objects in three
different cells, with three different shapes and three different colours, so every question
has one answer:

* ``color``: "What color is the circle?" -> "red";
* ``shape``: "What shape is the red one?" -> "circle";
* ``position``: "Is the red circle at the top or the bottom?" -> "top" (rows 0-1) or "bottom".

Everything is a function of ``(seed, index)``: the same seed gives the same images and items on
every machine, different seeds give different splits (training uses :data:`TRAIN_SEED`, the
evaluation sets :data:`HELD_OUT_SEED`). Items are written in ``eval-sweep``'s JSONL format
(:mod:`mipruner_vllm.evaluation.data`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COLORS",
    "GRID",
    "HELD_OUT_SEED",
    "IMAGE_SIZE",
    "MAX_ANSWER_TOKENS",
    "QUESTION_KINDS",
    "SHAPES",
    "TRAIN_SEED",
    "Scene",
    "SceneObject",
    "draw",
    "item",
    "items_for",
    "make_scene",
    "write_items",
]

IMAGE_SIZE = 112
GRID = 4
CELL = IMAGE_SIZE // GRID
#: Objects per image.
N_OBJECTS = 3
BACKGROUND = (40, 40, 40)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
    "orange": (245, 140, 30),
}
SHAPES = ("square", "circle", "triangle", "cross")
#: The ``max_tokens`` a request needs for any answer of the task to finish: the demo tokenizer
#: splits the longest answer, "triangle", into 5 tokens (t/ri/an/g/le), and ``<|im_end|>`` ends
#: it. A smaller budget truncates "triangle" to "triang" and scores every triangle answer wrong
#: (a budget of 4 did: shape accuracy 0.13 through the server against 0.57 in transformers).
MAX_ANSWER_TOKENS = 6
QUESTION_KINDS = ("color", "shape", "position")
#: Seeds of the splits: the training recipe draws scenes from TRAIN_SEED; held-out sets use
#: HELD_OUT_SEED (``mipruner-vllm demo-data --seed 1``).
TRAIN_SEED = 0
HELD_OUT_SEED = 1


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    row: int
    col: int
    #: Pixel offset of the shape inside its cell (jitter), and its half size.
    dx: int
    dy: int
    radius: int


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]


def _rng(seed: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"mipruner-demo-task:{seed}:{index}")


def make_scene(seed: int, index: int) -> Scene:
    """The ``index``-th scene of split ``seed``."""
    rng = _rng(seed, index)
    cells = rng.sample(range(GRID * GRID), N_OBJECTS)
    shapes = rng.sample(SHAPES, N_OBJECTS)
    colors = rng.sample(list(COLORS), N_OBJECTS)
    objects = tuple(
        SceneObject(
            shape=shape,
            color=color,
            row=cell // GRID,
            col=cell % GRID,
            dx=rng.randint(-2, 2),
            dy=rng.randint(-2, 2),
            radius=rng.randint(9, 11),
        )
        for cell, shape, color in zip(cells, shapes, colors, strict=True)
    )
    return Scene(objects)


def draw(scene: Scene) -> Any:
    """The scene as a 112 x 112 RGB PIL image."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx = obj.col * CELL + CELL // 2 + obj.dx
        cy = obj.row * CELL + CELL // 2 + obj.dy
        r = obj.radius
        fill = COLORS[obj.color]
        if obj.shape == "square":
            pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "triangle":
            pen.polygon(((cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)), fill=fill)
        else:  # cross: two bars a third of the size wide
            t = max(r // 3, 2)
            pen.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
            pen.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    return image


def question(kind: str, obj: SceneObject) -> tuple[str, str]:
    """``(question, answer)`` of one kind about one object of a scene."""
    if kind == "color":
        return f"What color is the {obj.shape}?", obj.color
    if kind == "shape":
        return f"What shape is the {obj.color} one?", obj.shape
    if kind == "position":
        where = "top" if obj.row < GRID // 2 else "bottom"
        return f"Is the {obj.color} {obj.shape} at the top or the bottom?", where
    raise ValueError(f"unknown question kind {kind!r}; allowed: {', '.join(QUESTION_KINDS)}")


def items_for(
    seed: int, index: int, kinds: Sequence[str] = QUESTION_KINDS
) -> Iterator[tuple[str, str, str]]:
    """``(kind, question, answer)`` for every object of scene ``index`` and every kind."""
    scene = make_scene(seed, index)
    for obj in scene.objects:
        for kind in kinds:
            q, a = question(kind, obj)
            yield kind, q, a


def item_kinds(text: str) -> Sequence[str]:
    """Parse a comma-separated list of question kinds."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in QUESTION_KINDS]
    if bad or not kinds:
        raise ValueError(f"question kinds must be among {', '.join(QUESTION_KINDS)}; got {text!r}")
    return kinds


def item(seed: int, index: int, kinds: Sequence[str] = QUESTION_KINDS) -> tuple[str, str, str]:
    """``(kind, question, answer)`` of item ``index`` of split ``seed``: the kinds in turn, and
    the objects of consecutive scenes in turn, so every kind asks about every object."""
    kind = kinds[index % len(kinds)]
    obj = make_scene(seed, index).objects[(index // len(kinds)) % N_OBJECTS]
    q, a = question(kind, obj)
    return kind, q, a


def write_items(
    out_dir: str | Path, seed: int, n_items: int, kinds: Sequence[str] = QUESTION_KINDS
) -> Path:
    """Write ``n_items`` items of split ``seed`` (PNGs + ``items.jsonl``); return the JSONL.

    Items cycle through the kinds and the objects of consecutive scenes, one item per scene, so
    ``n_items`` items use ``n_items`` different images and every kind is equally frequent.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_items):
        kind, text, answer = item(seed, index, kinds)
        file = Path("images") / f"{seed}-{index:05d}.png"
        draw(make_scene(seed, index)).save(out / file)
        lines.append(
            {
                "id": f"s{seed}-{index:05d}",
                "image": file.as_posix(),
                "question": text,
                "answer": answer,
                "kind": kind,
            }
        )
    jsonl = out / "items.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jsonl
