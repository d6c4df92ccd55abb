# SPDX-License-Identifier: Apache-2.0
"""The shipped trained demo checkpoint and its training recipe, without vLLM.

The checkpoint must be the tiny Qwen2.5-VL demo checkpoint in every byte but the trained
weights (same config, tokenizer, processor and chat template, same parameter names and shapes),
its recorded hash must match, its vision tower must still be the seeded initialisation (the
recipe freezes it), and it must answer the held-out task in transformers. The served accuracy
is tested through the real server in tests/server/test_demo_accuracy.py.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from mipruner_vllm.demo_model import (
    TRAINED_SHA256,
    TRAINED_SIZE,
    ensure_demo_model,
    task,
    trained_demo_model,
)
from mipruner_vllm.demo_model.cache import COMPLETE_MARKER

pytestmark = pytest.mark.unit

SAME_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "chat_template.jinja",
)


@pytest.fixture(scope="module")
def trained():
    return trained_demo_model()


@pytest.fixture(scope="module")
def tiny(demo_model_dir):
    return demo_model_dir("qwen2_5_vl", "tiny")


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_the_server_default_is_the_shipped_checkpoint_with_its_recorded_hash(trained):
    assert ensure_demo_model("qwen2_5_vl", TRAINED_SIZE) == trained
    digest = hashlib.sha256((trained / "model.safetensors").read_bytes()).hexdigest()
    assert digest == TRAINED_SHA256
    record = json.loads((trained / COMPLETE_MARKER).read_text())
    assert record["random_weights"] is False and record["size"] == "trained"
    assert record["recipe"]["steps"] > 0
    with pytest.raises(ValueError, match="no trained demo checkpoint for 'llava'"):
        trained_demo_model("llava")


def test_everything_but_the_weights_is_the_tiny_checkpoint(trained, tiny):
    for name in SAME_FILES:
        assert (trained / name).read_bytes() == (tiny / name).read_bytes(), name
    weights, initial = _tensors(trained), _tensors(tiny)
    assert {k: (v.shape, v.dtype) for k, v in weights.items()} == {
        k: (v.shape, v.dtype) for k, v in initial.items()
    }
    tower = [k for k in weights if k.startswith("visual.") and ".merger." not in k]
    trainable = [k for k in weights if k not in tower]
    assert tower and trainable
    # The recipe freezes the tower at its seeded initialisation and trains the rest.
    assert all(weights[k].equal(initial[k]) for k in tower)
    assert sum(not weights[k].equal(initial[k]) for k in trainable) > len(trainable) // 2


def test_it_answers_the_held_out_task_in_transformers(trained):
    import torch
    import transformers

    from mipruner_vllm.demo_model.train import evaluate

    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        trained, dtype=torch.float32
    )
    processor = transformers.AutoProcessor.from_pretrained(trained)
    record = json.loads((trained / COMPLETE_MARKER).read_text())
    accuracy = evaluate(model, processor, task.HELD_OUT_SEED, 60, kinds=record["recipe"]["kinds"])
    # The server test's 60 items, teacher-forced (float32): measured colour 0.97, shape 0.93, the
    # same as transformers generate (served in bfloat16: 0.97 / 0.93).
    assert accuracy["color"] >= 0.85, accuracy
    assert accuracy["shape"] >= 0.8, accuracy


def test_the_recipe_batches_match_the_stock_forward_and_label_only_answers(tiny):
    """Caching the frozen tower changes nothing: the training forward gives the stock model's
    logits on the processor's own inputs, and only the answer and <|im_end|> are labelled."""
    import torch
    import transformers

    from mipruner_vllm.demo_model.train import Batcher, VisionPool, _messages

    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny, dtype=torch.float32
    )
    processor = transformers.AutoProcessor.from_pretrained(tiny)
    pool = VisionPool(model, processor, seed=0, size=5)
    rng = random.Random(0)
    triples = []
    for index in (1, 4):
        obj = rng.choice(task.make_scene(0, index).objects)
        triples.append((index, *task.question("position" if index == 1 else "color", obj)))
    batch = Batcher(processor, pool)(model, triples)
    texts = [
        processor.apply_chat_template(_messages(q), add_generation_prompt=True) + a + "<|im_end|>"
        for _, q, a in triples
    ]
    images = [task.draw(task.make_scene(0, i)) for i, _, _ in triples]
    stock = processor(text=texts, images=images, return_tensors="pt", padding=True)
    assert batch["input_ids"].equal(stock["input_ids"])
    with torch.no_grad():
        cached = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        reference = model(**stock).logits
    assert torch.allclose(cached, reference, atol=1e-5)
    for row, (_, _, answer) in zip(batch["labels"], triples, strict=True):
        assert processor.tokenizer.decode(row[row != -100]) == answer + "<|im_end|>"


def test_a_snapshot_is_the_run_that_stops_there(tmp_path):
    """The recipe's claim behind ``snapshot_every``: the weights after step n of a longer run are
    byte for byte those of a run with ``steps=n`` (constant learning rate after warm-up, batches
    a function of the step only)."""
    import dataclasses

    from mipruner_vllm.demo_model.train import TrainRecipe, train_demo_checkpoint

    recipe = TrainRecipe(steps=4, batch_size=2, warmup_steps=2, pool_size=4, eval_items=3)
    train_demo_checkpoint(tmp_path / "long", recipe, snapshot_every=2)
    record = train_demo_checkpoint(tmp_path / "short", dataclasses.replace(recipe, steps=2))
    snapshot = tmp_path / "long.step-2"
    assert (snapshot / "model.safetensors").read_bytes() == (
        tmp_path / "short" / "model.safetensors"
    ).read_bytes()
    assert json.loads((snapshot / COMPLETE_MARKER).read_text())["recipe"] == record["recipe"]
    assert (tmp_path / "long" / "model.safetensors").read_bytes() != (
        snapshot / "model.safetensors"
    ).read_bytes()
    for name in SAME_FILES:
        assert (snapshot / name).read_bytes() == (tmp_path / "short" / name).read_bytes()
