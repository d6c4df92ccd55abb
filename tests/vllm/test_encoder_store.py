# SPDX-License-Identifier: Apache-2.0
"""The encoder path on a real CPU engine (issue 11), tiny Qwen2.5-VL.

A reference engine (store disabled, tower calls unbounded) first answers a fixed set of requests
and is shut down; then one plugin engine with a small store (about four 16-token images) serves
every check:

* a follow-up question about a stored image (or video) skips the tower, and its logprobs equal
  the same request's on the fresh reference engine;
* other media, and other resize settings, never share an entry; a tiny budget evicts (LRU);
* the same image with two questions runs the tower once and is selected twice: two turns of one
  request in one encoder batch (each item for its own question), and two requests sent together;
* many images at keep_ratio 0.1 in one encoder batch: every tower call stays within what vLLM's
  memory profile covered, and the outputs equal the reference engine's unsplit ones.

What the workers did is read from ``MIPRUNER_DEBUG_DIR``: ``encoder.jsonl`` (one line per encoder
batch: hits, misses, evictions, tower calls) and ``selections.jsonl`` (one per selected item).
The Prometheus side of the same counters is tested by the server tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.media import decoded_video

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

#: 112x112 on the tiny Qwen2.5-VL: 8x8 patches merged 2x2, 16 visual tokens.
SIDE = 112
N_VISUAL = 16
#: Both engines: one 128-token step holds several short image prompts, or one prompt of twelve
#: images at keep_ratio 0.1; vLLM then profiles the tower with 128 // 16 = 8 images.
ENGINE = {"max_num_batched_tokens": 128, "limit_mm_per_prompt": {"image": 12, "video": 1}}
#: About four stored 16-token images (bf16 rows of 128 plus int64 positions: 4,480 bytes each).
STORE_BYTES = 20_000
MANY = 12  # images in the splitting request: 192 unpruned tokens, more than the profiled 128


def image(seed: int, side: int = SIDE) -> Any:
    from PIL import Image

    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    )


def video(seed: int, frames: int = 4) -> Any:
    return decoded_video(seed, frames, SIDE)


@dataclass
class Engine:
    llm: Any
    tokenizer: Any
    debug_dir: Path

    def records(self, name: str) -> list[dict[str, Any]]:
        path = self.debug_dir / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def request(
        self, turns: list[tuple[str, int]], images: list[Any], vid: Any = None, **kwargs: Any
    ) -> dict:
        """A chat prompt: each turn is (question, number of images before it); a video, if any,
        goes in the first turn."""
        messages: list[dict[str, Any]] = []
        for k, (question, n_images) in enumerate(turns):
            content: list[dict[str, Any]] = [{"type": "image"}] * n_images
            if vid is not None and k == 0:
                content.append({"type": "video"})
            content.append({"type": "text", "text": question})
            if messages:
                messages.append({"role": "assistant", "content": "Yes."})
            messages.append({"role": "user", "content": content})
        prompt = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        data: dict[str, Any] = {}
        if images:
            data["image"] = images if len(images) > 1 else images[0]
        if vid is not None:
            data["video"] = vid
        return {"prompt": prompt, "multi_modal_data": data, "mm_processor_kwargs": kwargs}

    def ask(self, question: str, images: list[Any], **kwargs: Any) -> dict:
        return self.request([(question, len(images))], images, **kwargs)

    def run(self, requests: list[dict]) -> list[Any]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=3, temperature=0.0, logprobs=5)
        return self.llm.generate(requests, params, use_tqdm=False)


def summary(output: Any) -> tuple[list[int], list[dict[int, float]]]:
    completion = output.outputs[0]
    return list(completion.token_ids), [
        {t: lp.logprob for t, lp in step.items()} for step in completion.logprobs
    ]


FOLLOW_UP = ("What colour is the square in the corner?", "How many red squares are there?")
TURNS = ("Is there a cat?", "What is the cat doing?")


def reference_requests(e: Engine) -> dict[str, dict]:
    return {
        "follow_up": e.ask(FOLLOW_UP[1], [image(101)], keep_ratio=0.25),
        "video_follow_up": e.request(
            [("What happens next?", 0)], [], vid=video(151), keep_ratio=0.25
        ),
        "many": e.ask(
            "Which image is the brightest?", [image(200 + i) for i in range(MANY)], keep_ratio=0.1
        ),
        "turns": e.request(
            [(TURNS[0], 1), (TURNS[1], 1)], [image(301), image(301)], keep_ratio=0.25
        ),
    }


@pytest.fixture(scope="module")
def checkpoint(demo_model_dir: Any) -> str:
    return str(demo_model_dir("qwen2_5_vl"))


@pytest.fixture(scope="module")
def tokenizer(checkpoint: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def _plugin_llm(engine_tools: Any, checkpoint: str, debug_dir: Any, **settings: str) -> Any:
    """A plugin engine of this module's shape (``ENGINE``) writing its records to ``debug_dir``,
    with ``settings`` (the store and tower budgets under test)."""
    return engine_tools.make_llm(
        checkpoint, plugin=True, debug_dir=debug_dir, settings=settings, **ENGINE
    )


@pytest.fixture(scope="module")
def reference(
    checkpoint: str, tokenizer: Any, engine_tools: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """Outputs of a fresh plugin engine with no store and unbounded tower calls."""
    debug_dir = tmp_path_factory.mktemp("reference")
    llm = _plugin_llm(
        engine_tools,
        checkpoint,
        debug_dir,
        encoder_store_bytes="0",
        encoder_tower_tokens="100000",
    )
    try:
        e = Engine(llm, tokenizer, debug_dir)
        reqs = reference_requests(e)
        outs = {name: summary(e.run([req])[0]) for name, req in reqs.items()}
        batches = e.records("encoder.jsonl")
        # The reference really ran the twelve images in one tower call (unsplit) and stored nothing.
        assert any(b["tower_calls"] == [MANY * N_VISUAL] for b in batches), batches
        assert all(b["store_entries"] == 0 for b in batches)
        return outs
    finally:
        engine_tools.shutdown(llm)


@pytest.fixture(scope="module")
def e(
    checkpoint: str,
    tokenizer: Any,
    reference: dict,
    engine_tools: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    debug_dir = tmp_path_factory.mktemp("store")
    llm = _plugin_llm(engine_tools, checkpoint, debug_dir, encoder_store_bytes=str(STORE_BYTES))
    try:
        yield Engine(llm, tokenizer, debug_dir)
    finally:
        engine_tools.shutdown(llm)


class Tail:
    def __init__(self, e: Engine) -> None:
        self.e = e
        self.seen = {name: len(e.records(name)) for name in ("encoder.jsonl", "selections.jsonl")}

    def new(self, name: str) -> list[dict[str, Any]]:
        records = self.e.records(name)
        fresh, self.seen[name] = records[self.seen[name] :], len(records)
        return fresh


def _hits(batches: list[dict]) -> int:
    return sum(b["hits"] for b in batches)


def _tower_tokens(batches: list[dict]) -> int:
    return sum(sum(b["tower_calls"]) for b in batches)


# ---------------------------------------------------------------------------------------------


def test_follow_up_question_hits_the_store_and_equals_a_fresh_engine(
    e: Engine, reference: dict
) -> None:
    tail = Tail(e)
    e.run([e.ask(FOLLOW_UP[0], [image(101)], keep_ratio=0.25)])
    first = tail.new("encoder.jsonl")
    assert _tower_tokens(first) == N_VISUAL and first[-1]["misses"] == 1
    out = e.run([e.ask(FOLLOW_UP[1], [image(101)], keep_ratio=0.25)])[0]
    follow = tail.new("encoder.jsonl")
    assert _hits(follow) == 1 and _tower_tokens(follow) == 0, follow  # the tower did not run
    selections = tail.new("selections.jsonl")
    assert len(selections) == 2 and selections[0]["text_ids"] != selections[1]["text_ids"]
    assert summary(out) == reference["follow_up"]
    # Another budget on the same image is a hit too: the store holds the unpruned output.
    e.run([e.ask("Anything else?", [image(101)], keep_ratio=0.5)])
    assert _hits(tail.new("encoder.jsonl")) == 1


def test_video_follow_up_hits_the_store(e: Engine, reference: dict) -> None:
    tail = Tail(e)
    e.run([e.request([("What is moving?", 0)], [], vid=video(151), keep_ratio=0.25)])
    assert _tower_tokens(tail.new("encoder.jsonl")) > 0
    out = e.run([e.request([("What happens next?", 0)], [], vid=video(151), keep_ratio=0.25)])[0]
    batches = tail.new("encoder.jsonl")
    assert (
        _hits(batches) == 1 and _tower_tokens(batches) == 0 and batches[-1]["modality"] == "video"
    )
    assert summary(out) == reference["video_follow_up"]


def test_other_media_and_other_resize_settings_never_share_an_entry(e: Engine) -> None:
    tail = Tail(e)
    e.run([e.ask("What is this?", [image(102)], keep_ratio=0.25)])
    e.run([e.ask("What is this?", [image(103)], keep_ratio=0.25)])
    e.run([e.ask("What is this?", [image(102)], keep_ratio=0.25, max_pixels=56 * 56)])
    batches = tail.new("encoder.jsonl")
    assert _hits(batches) == 0 and sum(b["misses"] for b in batches) == 3
    assert len({b["keys"][0] for b in batches}) == 3
    assert [b["costs"] for b in batches] == [
        [N_VISUAL],
        [N_VISUAL],
        [4],
    ]  # resized: 56x56, 4 tokens


def test_tiny_budget_evicts_least_recently_used(e: Engine) -> None:
    tail = Tail(e)
    for seed in range(401, 407):  # six images, about four fit
        e.run([e.ask("What is this?", [image(seed)], keep_ratio=0.25)])
    batches = tail.new("encoder.jsonl")
    assert sum(b["evictions"] for b in batches) >= 2
    assert all(b["store_bytes"] <= STORE_BYTES for b in batches)
    e.run([e.ask("And now?", [image(406)], keep_ratio=0.25)])  # the newest is still stored
    assert _hits(tail.new("encoder.jsonl")) == 1
    e.run([e.ask("And now?", [image(401)], keep_ratio=0.25)])  # the oldest was evicted
    again = tail.new("encoder.jsonl")
    assert _hits(again) == 0 and _tower_tokens(again) == N_VISUAL


def test_same_image_in_two_requests_runs_the_tower_once_with_two_selections(e: Engine) -> None:
    tail = Tail(e)
    questions = ("Where is the dog?", "What colour is the sky?")
    outs = e.run([e.ask(q, [image(501)], keep_ratio=0.25) for q in questions])
    batches = tail.new("encoder.jsonl")
    # Whether vLLM schedules both prefills in one step depends on when its engine process picks
    # up the second request: in one encoder batch the second item is a copy of the first, in
    # the next batch it is a store hit. Either way the tower runs once (the in-batch case is
    # pinned by the two-turn test below, where both items are in one prompt and one step).
    assert sum(b["items"] for b in batches) == 2 and _hits(batches) == 1
    assert _tower_tokens(batches) == N_VISUAL
    selections = tail.new("selections.jsonl")
    assert len(selections) == 2
    assert {tuple(s["text_ids"]) for s in selections} == {
        tuple(e.tokenizer.encode(q, add_special_tokens=False)) for q in questions
    }
    assert all(o.outputs[0].token_ids for o in outs)


def test_same_image_in_two_turns_is_selected_for_each_turns_question(
    e: Engine, reference: dict
) -> None:
    tail = Tail(e)
    out = e.run(
        [e.request([(TURNS[0], 1), (TURNS[1], 1)], [image(301), image(301)], keep_ratio=0.25)]
    )[0]
    batches = tail.new("encoder.jsonl")
    # Both items in one encoder batch (one prompt, one step): the tower runs once for both.
    assert [(b["items"], b["hits"], b["misses"], b["tower_calls"]) for b in batches] == [
        (2, 1, 1, [N_VISUAL])
    ]
    selections = tail.new("selections.jsonl")
    assert [s["text_ids"] for s in selections] == [
        e.tokenizer.encode(q, add_special_tokens=False) for q in TURNS
    ]
    assert summary(out) == reference["turns"]


def test_many_pruned_images_are_split_within_the_profile_and_equal_unsplit(
    e: Engine, reference: dict
) -> None:
    tail = Tail(e)
    out = e.run(
        [
            e.ask(
                "Which image is the brightest?",
                [image(200 + i) for i in range(MANY)],
                keep_ratio=0.1,
            )
        ]
    )[0]
    batches = tail.new("encoder.jsonl")
    limit = batches[0]["limit"]
    assert 0 < limit < MANY * N_VISUAL  # vLLM profiled fewer images than the scheduler sent
    calls = [tokens for b in batches for tokens in b["tower_calls"]]
    assert sum(calls) == MANY * N_VISUAL and len(calls) > 1
    assert max(calls) <= limit
    assert any(b["items"] * N_VISUAL > limit for b in batches)  # one encoder batch overfilled
    assert summary(out) == reference["many"]
