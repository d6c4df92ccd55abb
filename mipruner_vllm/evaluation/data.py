# SPDX-License-Identifier: Apache-2.0
"""The sweep's own dataset format (JSONL of image / question / answer), its scoring, and a
generated demo set.

One JSON object per line::

    {"id": "q1", "image": "images/0001.jpg", "question": "What colour is the bus?", "answer": "red"}

* ``image``: a path (relative to the JSONL file's folder, or absolute), an ``http(s)://`` URL
  (fetched by the server) or a ``data:`` URL; a list of them for several images in one turn;
* ``question``: the text of the user turn, sent after the image(s). It is also MI-Pruner's query,
  so any instruction in it ("Answer with one word.") is part of what the selection scores;
* ``answer``: a string, or a list of accepted strings;
* ``id``: optional (the line number otherwise).

A prediction is correct when its normalised text equals a normalised answer (``exact``), or
contains one as whole words (``contains``). Normalisation: lower case, punctuation and the
articles a / an / the removed, whitespace collapsed.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mipruner_vllm.errors import MiprunerError

MATCH_MODES = ("exact", "contains")


class DatasetError(MiprunerError, ValueError):
    """A JSONL line is not a valid item; the message names the file, line and key."""


@dataclass(frozen=True)
class Item:
    id: str
    images: tuple[str, ...]  # URLs as sent (data: URLs for local files)
    question: str
    answers: tuple[str, ...]


def _image_url(value: str, base: Path, where: str) -> str:
    if value.startswith(("data:", "http://", "https://")):
        return value
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise DatasetError(f"{where}: image file not found: {path}")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not mime.startswith("image/"):
        raise DatasetError(f"{where}: {path.name} is not an image file ({mime})")
    # The file's own bytes: no re-encoding, so what the model sees is what the user stored.
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _item(row: object, where: str, base: Path, line_number: int) -> Item:
    """One JSONL line's object as an :class:`Item`; raises :class:`DatasetError` naming the key."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object")
    for key in ("image", "question", "answer"):
        if key not in row:
            raise DatasetError(f"{where}: missing key {key!r}")
    images = row["image"] if isinstance(row["image"], list) else [row["image"]]
    answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
    if not images or not all(isinstance(i, str) and i for i in images):
        raise DatasetError(f"{where}: 'image' must be a non-empty string or list of strings")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise DatasetError(f"{where}: 'question' must be a non-empty string")
    if not answers or not all(isinstance(a, (str, int, float)) for a in answers):
        raise DatasetError(f"{where}: 'answer' must be a string or a list of strings")
    return Item(
        id=str(row.get("id", line_number)),
        images=tuple(_image_url(i, base, where) for i in images),
        question=row["question"],
        answers=tuple(str(a) for a in answers),
    )


def load_items(path: str | Path, limit: int | None = None) -> list[Item]:
    """Read and check a JSONL dataset; raises :class:`DatasetError` on the first bad line.

    Keys other than ``id``, ``image``, ``question`` and ``answer`` (the demo task's ``kind``)
    are ignored."""
    path = Path(path)
    items: list[Item] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
            item = _item(row, where, path.parent, number)
            if item.id in seen:
                raise DatasetError(f"{where}: duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise DatasetError(f"{path}: no items")
    return items


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_correct(prediction: str, answers: Sequence[str], match: str = "exact") -> bool:
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    pred = normalize_answer(prediction)
    for answer in answers:
        gold = normalize_answer(answer)
        if not gold:
            continue
        if pred == gold or (match == "contains" and f" {gold} " in f" {pred} "):
            return True
    return False


#: The demo set: solid-colour images of several sizes, so items differ in visual-token count.
DEMO_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}
#: On the tiny demo checkpoints (Qwen2/2.5-VL, 28-px merged patches) these sizes are 16, 4, 8,
#: 9, 12 and 8 visual tokens.
DEMO_SIZES = ((112, 112), (56, 56), (112, 56), (84, 84), (112, 84), (56, 112))


def write_demo_dataset(out_dir: str | Path, n_items: int = 12) -> Path:
    """Write ``n_items`` PNGs and ``items.jsonl`` (question: the colour; answer: its name).

    The answers are known, but a model with random weights (the demo checkpoints) will not find
    them: this set checks the plumbing (pruning, budgets, CSV, plot), not a model.
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = list(DEMO_COLOURS)
    lines = []
    for i in range(n_items):
        name = names[i % len(names)]
        # Shift the size each round of colours, so no two items have the same image.
        size = DEMO_SIZES[(i + i // len(names)) % len(DEMO_SIZES)]
        file = Path("images") / f"{i:04d}-{name}.png"
        Image.new("RGB", size, DEMO_COLOURS[name]).save(out / file)
        lines.append(
            {
                "id": f"demo-{i:04d}",
                "image": file.as_posix(),
                "question": "What colour is this image? Answer with one word.",
                "answer": name,
            }
        )
    jsonl = out / "items.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jsonl


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m mipruner_vllm.evaluation.data OUT_DIR [N_ITEMS]")
    print(write_demo_dataset(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 12))
