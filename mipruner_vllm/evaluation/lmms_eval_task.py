# SPDX-License-Identifier: Apache-2.0
"""A JSONL of image / question / answer (:mod:`.data`) as an lmms-eval task.

``python -m mipruner_vllm.evaluation.lmms_eval_task items.jsonl my-tasks/`` writes into
``my-tasks/``:

* ``mipruner_jsonl.jsonl``: the items with absolute image paths and a list of answers, so that
  lmms-eval's ``json`` dataset loader reads them from anywhere;
* ``mipruner_jsonl.yaml``: the task, scored like the sweep (normalised exact match, metric
  ``exact_match_score``: the ``_score`` suffix is what lmms-eval's ``--baseline`` comparison
  looks for), its prompt the question as written.

Then ``lmms-eval --model mipruner --include_path my-tasks --tasks mipruner_jsonl ...``. The
functions below are the task's ``doc_to_*`` and ``process_results`` hooks (named in the YAML by
module path); nothing here imports lmms-eval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mipruner_vllm.evaluation.data import DatasetError, is_correct

TASK = "mipruner_jsonl"
_HOOKS = "mipruner_vllm.evaluation.lmms_eval_task"


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    from PIL import Image

    images = []
    for path in doc["images"]:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def doc_to_text(
    doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None
) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["answers"][0]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match_score": float(is_correct(results[0], doc["answers"]))}


def write_task(
    jsonl: str | Path, out_dir: str | Path, task: str = TASK, max_new_tokens: int = 16
) -> Path:
    """Write the task files for ``jsonl``; returns the YAML's path. Local image paths only."""
    jsonl, out = Path(jsonl).resolve(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        paths = []
        for image in images:
            if image.startswith(("data:", "http://", "https://")):
                raise DatasetError(
                    f"{jsonl}:{number}: the lmms-eval task takes local image files only"
                )
            path = Path(image) if Path(image).is_absolute() else jsonl.parent / image
            if not path.is_file():
                raise DatasetError(f"{jsonl}:{number}: image file not found: {path}")
            paths.append(str(path.resolve()))
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        rows.append(
            {
                "id": str(row.get("id", number)),
                "images": paths,
                "question": row["question"],
                "answers": [str(a) for a in answers],
            }
        )
    data = out / f"{task}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = out / f"{task}.yaml"
    yaml.write_text(
        f"""# Written by mipruner_vllm.evaluation.lmms_eval_task from {jsonl}
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data.resolve()))}
test_split: test
output_type: generate_until
doc_to_visual: !function {_HOOKS}.doc_to_visual
doc_to_text: !function {_HOOKS}.doc_to_text
doc_to_target: !function {_HOOKS}.doc_to_target
process_results: !function {_HOOKS}.process_results
generation_kwargs:
  max_new_tokens: {int(max_new_tokens)}
  temperature: 0
metric_list:
  - metric: exact_match_score
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 1
"""
    )
    return yaml


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m mipruner_vllm.evaluation.lmms_eval_task ITEMS.jsonl OUT_DIR")
    print(write_task(sys.argv[1], sys.argv[2]))
