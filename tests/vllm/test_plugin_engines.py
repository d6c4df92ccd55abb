# SPDX-License-Identifier: Apache-2.0
"""The vLLM plugin end to end on a real CPU engine, per architecture (issue 4's test list).

For each architecture (a module-scoped, parametrized fixture; pytest runs all tests of one
architecture before starting the next engine) a stock engine first produces reference outputs
and is shut down, then one plugin engine serves every check:

* keep_ratio = 1 reproduces stock vLLM's logprobs exactly, for square, wide and tall images (and
  a video for the Qwen family): placeholders, positions and embeddings are untouched;
* prompt token counts follow the budget rule for several keep ratios and for keep_tokens;
* requests with different parameters in one batch each get their own selection, and every
  selection method prunes to the budget;
* the same image with another question is selected again (query-aware hash), while the same
  request twice gives identical output, the second time from the prefix cache;
* ``LLM.chat`` takes the same parameters, and the same query (the question only), as ``generate``;
* two images in one request, and a video (Qwen family; Qwen3-VL and Qwen3.5 by their frame rule);
* chunked prefill that splits a pruned image at another place gives the same selection and
  output (through the recurrent state for the hybrid Qwen3.5 LLM);
* a bad parameter is rejected with a clear error and the engine keeps serving;
* ``pruning_detail`` (issue 21): one file per media item, written by the worker, whose kept
  indices are the worker's own selection and fill exactly the item's placeholders; a video is
  one item (Qwen3-VL and Qwen3.5: the per-frame selections, offset by frame).

Qwen3.5 (dense and MoE) is a hybrid model: vLLM raises its cache block to 64 tokens here (one
recurrent-state page) and prefix-caches it in whole blocks, so the repeat prompts are made
longer than the engine's block, whatever it is.

The worker-side selections are observed through ``MIPRUNER_DEBUG_DIR``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.media import decoded_video

from mipruner_vllm.params import PruningParams, n_keep

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe")
#: Qwen3-VL's vision side: 16-px patches, every video frame its own placeholder run.
QWEN3_VISION = ("qwen3_vl", "qwen3_5", "qwen3_5_moe")
#: The Qwen family first: tests of what only it supports (video) take the ``arch`` fixture over
#: ``QWEN`` alone, and equal leading params keep them on the same module-scoped engine.
ARCHS = [*QWEN, "llava", "llava_next"]

# (width, height) of the test images per architecture: square, wide, tall. Sizes stay inside the
# tiny checkpoints' pixel limits so that each image is a handful of visual tokens.
IMAGE_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "qwen2_vl": {"square": (112, 112), "wide": (112, 56), "tall": (56, 112)},
    "qwen2_5_vl": {"square": (112, 112), "wide": (112, 56), "tall": (56, 112)},
    "qwen3_vl": {"square": (128, 128), "wide": (128, 64), "tall": (64, 128)},
    "qwen3_5": {"square": (128, 128), "wide": (128, 64), "tall": (64, 128)},
    "qwen3_5_moe": {"square": (128, 128), "wide": (128, 64), "tall": (64, 128)},
    "llava": {"square": (56, 56), "wide": (112, 56), "tall": (56, 112)},
    "llava_next": {"square": (56, 56), "wide": (84, 28), "tall": (28, 84)},
}
QUESTION = "What is in the image?"


def image(size: tuple[int, int], seed: int = 0) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def video(arch: str, frames: int = 4, seed: int = 7) -> Any:
    """A pre-decoded video at the family's test image side."""
    return decoded_video(seed, frames, 128 if arch in QWEN3_VISION else 112)


@dataclass
class Harness:
    arch: str
    llm: Any
    tokenizer: Any
    debug_dir: Path
    tools: Any = None
    #: ``MIPRUNER_DETAIL_DIR`` of the plugin engine: its worker writes one file per item of a
    #: request that asks ``pruning_detail`` (offline, nobody reads them but the tests).
    detail_dir: Path | None = None

    def tail(self) -> Any:
        return self.tools.RecordTail(self.debug_dir)

    def records(self) -> list[dict[str, Any]]:
        return self.tools.read_records(self.debug_dir)

    def media_token_ids(self) -> set[int]:
        names = ("<|image_pad|>", "<|video_pad|>") if self.arch in QWEN else ("<image>",)
        return {self.tokenizer.convert_tokens_to_ids(name) for name in names}

    def prompt(self, question: str, n_images: int = 1, videos: int = 0) -> str:
        content: list[dict[str, Any]] = [{"type": "image"}] * n_images + [
            {"type": "video"}
        ] * videos
        if question:
            content.append({"type": "text", "text": question})
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def request(
        self,
        question: str = QUESTION,
        images: list[Any] | None = None,
        vid: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        images = images or []
        data: dict[str, Any] = {}
        if images:
            data["image"] = images if len(images) > 1 else images[0]
        if vid is not None:
            data["video"] = vid
        req: dict[str, Any] = {
            "prompt": self.prompt(question, len(images), int(vid is not None)),
            "multi_modal_data": data,
        }
        if kwargs:
            req["mm_processor_kwargs"] = kwargs
        return req

    def run(self, requests: list[dict[str, Any]], max_tokens: int = 3) -> list[Any]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=5)
        return self.llm.generate(requests, params, use_tqdm=False)


def summary(output: Any) -> tuple[list[int], list[dict[int, float]]]:
    """Generated token ids and the top-5 logprobs of each step."""
    completion = output.outputs[0]
    logprobs = [{tok: lp.logprob for tok, lp in step.items()} for step in completion.logprobs]
    return list(completion.token_ids), logprobs


def reference_requests(h: Harness) -> dict[str, dict[str, Any]]:
    sizes = IMAGE_SIZES[h.arch]
    reqs = {
        name: h.request(images=[image(size, seed=i)])
        for i, (name, size) in enumerate(sizes.items())
    }
    if h.arch in QWEN:
        reqs["video"] = h.request("What happens in the video?", vid=video(h.arch))
    return reqs


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoint(arch: str, demo_model_dir: Any) -> str:
    return str(demo_model_dir(arch))


@pytest.fixture(scope="module")
def tokenizer(checkpoint: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def _limits(arch: str) -> dict[str, int]:
    return {"image": 2, "video": 1} if arch in QWEN else {"image": 2}


@pytest.fixture(scope="module")
def stock_outputs(
    arch: str,
    checkpoint: str,
    tokenizer: Any,
    engine_tools: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Reference outputs of stock vLLM (the engine is shut down before the plugin engine starts)."""
    llm = engine_tools.make_llm(checkpoint, plugin=False, limit_mm_per_prompt=_limits(arch))
    try:
        h = Harness(arch, llm, tokenizer, tmp_path_factory.mktemp("unused"))
        reqs = reference_requests(h)
        outs = h.run(list(reqs.values()))
        return {
            name: (summary(o), len(o.prompt_token_ids)) for name, o in zip(reqs, outs, strict=True)
        }
    finally:
        engine_tools.shutdown(llm)


@pytest.fixture(scope="module")
def h(
    arch: str,
    checkpoint: str,
    tokenizer: Any,
    stock_outputs: Any,
    engine_tools: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    debug_dir = tmp_path_factory.mktemp(f"selections-{arch}")
    detail_dir = tmp_path_factory.mktemp(f"detail-{arch}")
    llm = engine_tools.make_llm(
        checkpoint,
        plugin=True,
        debug_dir=debug_dir,
        settings={"detail_dir": str(detail_dir)},
        limit_mm_per_prompt=_limits(arch),
    )
    try:
        yield Harness(arch, llm, tokenizer, debug_dir, engine_tools, detail_dir)
    finally:
        engine_tools.shutdown(llm)


def n_visual_of(h: Harness, req_kwargs: dict[str, Any], base_len: int, make: Any) -> int:
    """N_V of the request built by ``make(**kwargs)``: base length minus the keep_tokens=1
    length, +1."""
    one = h.run([make(keep_tokens=1)], max_tokens=1)[0]
    return base_len - len(one.prompt_token_ids) + 1


# ---------------------------------------------------------------------------------------------


def test_keep_ratio_one_matches_stock(h: Harness, stock_outputs: dict[str, Any]) -> None:
    reqs = reference_requests(h)
    default = h.run(list(reqs.values()))
    explicit = h.run([{**r, "mm_processor_kwargs": {"keep_ratio": 1.0}} for r in reqs.values()])
    assert not h.records(), "keep_ratio=1 must not run a selection"
    for name, out_default, out_explicit in zip(reqs, default, explicit, strict=True):
        (ref, ref_len) = stock_outputs[name]
        assert len(out_default.prompt_token_ids) == ref_len, name
        assert summary(out_default) == ref, (
            f"{h.arch}/{name}: default (keep all) differs from stock"
        )
        assert summary(out_explicit) == ref, f"{h.arch}/{name}: keep_ratio=1.0 differs from stock"


def test_prompt_tokens_follow_budget(h: Harness) -> None:
    img = image(IMAGE_SIZES[h.arch]["square"], seed=11)

    def make(**kw: Any) -> dict[str, Any]:
        return h.request("Count the objects.", images=[img], **kw)

    base = len(h.run([make(keep_ratio=1.0)], max_tokens=1)[0].prompt_token_ids)
    n_v = n_visual_of(h, {}, base, make)
    assert n_v >= 4
    cases = [{"keep_ratio": r} for r in (0.1, 0.25, 0.5, 0.75, 0.9)] + [
        {"keep_tokens": 3},
        {"keep_tokens": 10_000},
    ]
    outs = h.run([make(**kw) for kw in cases], max_tokens=1)
    for kw, out in zip(cases, outs, strict=True):
        expected = base - n_v + n_keep(n_v, **kw)
        assert len(out.prompt_token_ids) == expected, (kw, len(out.prompt_token_ids), expected)


def test_batch_with_mixed_parameters(h: Harness) -> None:
    tail = h.tail()
    img = image(IMAGE_SIZES[h.arch]["square"], seed=21)
    cases = [
        {"keep_ratio": 0.25},
        {"keep_ratio": 0.5},
        {"keep_ratio": 0.25, "mi_lambda": 0.3},
        {"keep_tokens": 2, "pruning_method": "divprune"},
    ]
    outs = h.run([h.request("Where is the cat?", images=[img], **kw) for kw in cases], max_tokens=1)
    records = tail.new()
    assert len(records) == len(cases), records
    lengths = {len(o.prompt_token_ids) for o in outs}
    assert len(lengths) == 3  # 0.25 twice (two lambdas), 0.5, keep_tokens=2
    n_v = records[0]["n_visual"]
    for kw in cases:
        matching = [
            r
            for r in records
            if all(r["params"].get(k) == v for k, v in kw.items())
            and ("mi_lambda" in kw or r["params"]["mi_lambda"] == 1.0)
        ]
        assert len(matching) == 1, (kw, records)
        record = matching[0]
        budget = {k: v for k, v in kw.items() if k in ("keep_ratio", "keep_tokens")}
        assert len(record["kept"]) == n_keep(n_v, **budget) + record["n_fixed"]
        assert record["kept"] == sorted(record["kept"])
        # LLaVA-NeXT newline rule: every row newline is kept (and only LLaVA-NeXT has them).
        assert set(record["fixed"]) <= set(record["kept"])
        assert (record["n_fixed"] > 0) == (h.arch == "llava_next")
    greedy = next(r for r in records if r["params"]["mi_lambda"] == 0.3)
    assert len(greedy["kept"]) == n_keep(n_v, keep_ratio=0.25) + greedy["n_fixed"]


def test_every_method_keeps_the_budget(h: Harness) -> None:
    """All selection methods in one batch: each prunes to the budget; ``none`` keeps all."""
    from mipruner_vllm.config import PRUNING_METHODS

    img = image(IMAGE_SIZES[h.arch]["square"], seed=91)
    tail = h.tail()
    full = h.run([h.request("What is on the table?", images=[img])], max_tokens=1)[0]
    # ``none`` keeps every token and takes no budget (a budget with it is refused).
    budgets = {m: ({} if m == "none" else {"keep_ratio": 0.5}) for m in PRUNING_METHODS}
    reqs = [
        h.request("What is on the table?", images=[img], pruning_method=m, **budgets[m])
        for m in PRUNING_METHODS
    ]
    outs = dict(zip(PRUNING_METHODS, h.run(reqs, max_tokens=1), strict=True))
    records = {r["params"]["pruning_method"]: r for r in tail.new()}
    assert set(records) == set(PRUNING_METHODS) - {"none"}
    assert len(outs["none"].prompt_token_ids) == len(full.prompt_token_ids)
    for method, record in records.items():
        n_v, n_fixed = record["n_visual"], record["n_fixed"]
        assert len(record["kept"]) == n_keep(n_v, keep_ratio=0.5) + n_fixed, method
        assert record["kept"] == sorted(set(record["kept"])), method
        removed = n_v + n_fixed - len(record["kept"])
        assert len(outs[method].prompt_token_ids) == len(full.prompt_token_ids) - removed, method
        assert outs[method].outputs[0].token_ids, method


def test_question_changes_selection_and_repeat_is_cached(h: Harness) -> None:
    img = image(IMAGE_SIZES[h.arch]["square"], seed=31)
    questions = [
        "Is there a red car in the picture?",
        "Describe the sky.",
        "How many people are there?",
    ]
    tail = h.tail()
    for q in questions:
        h.run([h.request(q, images=[img], keep_ratio=0.25)], max_tokens=1)
    records = tail.new()
    # One selection per question: the query tokens are part of the multimodal hash, so no cache
    # served one question's selection to the next.
    assert len(records) == len(questions)
    assert len({tuple(r["text_ids"]) for r in records}) == len(questions)
    assert len({tuple(r["kept"]) for r in records}) > 1, "the query text must change the selection"

    # Long enough that the pruned prompt spans more than one cache block (32 tokens, 64 for the
    # hybrid Qwen3.5): the repeat then reads the image's KV (and, for Qwen3.5, the recurrent
    # state after it) from the prefix cache and computes only the text after it.
    block = h.llm.llm_engine.vllm_config.cache_config.block_size
    sentence = (
        "What colour is the ball, and where is it in the picture relative to the dog and the tree? "
    )
    long_question = sentence * (2 + block // 16)
    req = h.request(long_question, images=[img], keep_ratio=0.25, mi_lambda=0.5)
    first = h.run([req])[0]
    assert len(first.prompt_token_ids) > block + 8
    second = h.run([req])[0]
    assert len(tail.new()) == 1  # the repeat is served from the caches
    cached = second.num_cached_tokens or 0
    assert cached >= block, f"the repeat should hit the prefix cache ({cached} of block {block})"
    assert cached % block == 0  # hits come in whole blocks
    assert summary(first) == summary(second)


def test_chat_takes_the_same_parameters_and_query(h: Harness) -> None:
    """``LLM.chat(..., mm_processor_kwargs=...)``: same budget and query policy as ``generate``."""
    import base64
    import io

    from vllm import SamplingParams

    img = image(IMAGE_SIZES[h.arch]["square"], seed=71)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    question = "Where is the red ball?"
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": question},
            ],
        },
    ]
    tail = h.tail()
    params = SamplingParams(max_tokens=1, temperature=0.0)
    full = h.llm.chat(messages, params, use_tqdm=False)[0]
    pruned = h.llm.chat(messages, params, use_tqdm=False, mm_processor_kwargs={"keep_ratio": 0.25})[
        0
    ]
    generated = h.run([h.request(question, images=[img], keep_ratio=0.25)], max_tokens=1)[0]
    records = tail.new()
    assert (
        len(records) == 2
    )  # the chat request and the generate request (another prompt, another hash)
    n_v, n_fixed = records[0]["n_visual"], records[0]["n_fixed"]
    assert len(pruned.prompt_token_ids) == len(full.prompt_token_ids) - n_v - n_fixed + len(
        records[0]["kept"]
    )
    assert len(records[0]["kept"]) == n_keep(n_v, keep_ratio=0.25) + n_fixed
    # The query is the question only: no system prompt, no template, identical to generate's.
    assert records[0]["text_ids"] == records[1]["text_ids"]
    assert records[0]["text_ids"] == h.tokenizer.encode(question, add_special_tokens=False)
    assert records[0]["kept"] == records[1]["kept"]
    assert generated.outputs[0].token_ids


def test_two_images_in_one_request(h: Harness) -> None:
    sizes = IMAGE_SIZES[h.arch]
    imgs = [image(sizes["square"], seed=41), image(sizes["wide"], seed=42)]
    tail = h.tail()
    base = len(
        h.run([h.request("Compare the two images.", images=imgs)], max_tokens=1)[0].prompt_token_ids
    )
    out = h.run([h.request("Compare the two images.", images=imgs, keep_ratio=0.5)])[0]
    records = tail.new()
    assert len(records) == 2
    removed = sum(r["n_visual"] + r["n_fixed"] - len(r["kept"]) for r in records)
    assert len(out.prompt_token_ids) == base - removed
    for r in records:
        assert len(r["kept"]) == n_keep(r["n_visual"], keep_ratio=0.5) + r["n_fixed"]
    assert out.outputs[0].token_ids


# LLaVA-1.5 and LLaVA-NeXT take images only (vLLM registers no video input for them).
@pytest.mark.parametrize("arch", QWEN, indirect=True)
def test_video(h: Harness) -> None:
    tail = h.tail()
    vid = video(h.arch, frames=4, seed=51)
    base = len(h.run([h.request("What happens?", vid=vid)], max_tokens=1)[0].prompt_token_ids)
    outs = [
        h.run([h.request("What happens?", vid=vid, **kw)])[0]
        for kw in ({"keep_ratio": 0.25}, {"keep_tokens": 5})
    ]
    records = tail.new()
    assert len(records) == 2 and {r["modality"] for r in records} == {"video"}
    n_v = records[0]["n_visual"]
    for out, budget in zip(outs, ({"keep_ratio": 0.25}, {"keep_tokens": 5}), strict=True):
        # The whole video is one item with one budget, whatever the prompt layout.
        assert len(out.prompt_token_ids) == base - n_v + n_keep(n_v, **budget), budget
        assert out.outputs[0].token_ids
    for record in records:
        kept = record["kept"]
        assert kept == sorted(kept) and len(set(kept)) == len(kept) and max(kept) < n_v
        budget = {
            k: record["params"][k]
            for k in ("keep_ratio", "keep_tokens")
            if record["params"].get(k) is not None
        }
        assert len(kept) == n_keep(n_v, **budget)
        if h.arch in QWEN3_VISION:
            # Each frame follows its own timestamp, so each frame keeps its share of the budget.
            frames = record["frames"]
            assert frames > 1
            per_frame = n_v // frames
            shares = PruningParams(**budget).n_keep_per_frame(frames, per_frame)
            assert [sum(1 for i in kept if i // per_frame == f) for f in range(frames)] == shares
        else:
            # Qwen2/2.5-VL: the video is one run, so the kept tokens may come from any frame.
            assert record["frames"] == 1
    # The same pruned video again: served from the caches (no new selection), same output.
    again = h.run([h.request("What happens?", vid=vid, keep_ratio=0.25)])[0]
    assert not tail.new()
    assert summary(again) == summary(outs[0])


def test_chunked_prefill_split_inside_pruned_media(h: Harness) -> None:
    """A pruned image split across two prefill steps at another place: same rows, same output.

    The engines prefill at most 32 tokens per step. Behind a text-only prompt of ``lead``
    tokens in the same step, the request's steps end at ``32 - lead`` and then 31 tokens later
    (the text prompt decodes one token per step), instead of at multiples of 32 when alone.
    ``lead`` is chosen so that one of those ends falls in the middle of the kept image rows, so
    the rest of them (their positions, and for Qwen3.5 the recurrent state through them)
    continue in the next step.
    """
    budget = h.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    img = image(IMAGE_SIZES[h.arch]["square"], seed=81)
    tail = h.tail()
    alone = h.run([h.request("Where is the dog?", images=[img], keep_ratio=0.5)])[0]
    ids = list(alone.prompt_token_ids)
    media = [i for i, t in enumerate(ids) if t in h.media_token_ids()]
    start, kept = media[0], len(media)
    target = start + kept // 2
    lead = budget - target if target < budget else 2 * budget - 1 - target
    assert 1 <= lead < budget, (start, kept)
    text = h.tokenizer.encode(sentence_of(lead * 2), add_special_tokens=False)[:lead]
    assert len(text) == lead
    # Another seed: a new hash (no cache serves the first run), the same MI selection.
    shifted = h.run(
        [
            {"prompt_token_ids": text},
            h.request("Where is the dog?", images=[img], keep_ratio=0.5, pruning_seed=1),
        ]
    )[1]
    records = tail.new()
    assert len(records) == 2 and records[0]["kept"] == records[1]["kept"]
    assert shifted.prompt_token_ids == alone.prompt_token_ids
    (tokens_a, logprobs_a), (tokens_b, logprobs_b) = summary(alone), summary(shifted)
    assert tokens_a == tokens_b
    for step_a, step_b in zip(logprobs_a, logprobs_b, strict=True):
        # Another split of the same prompt sums in another order: equal up to rounding.
        common = set(step_a) & set(step_b)
        assert len(common) >= 4
        assert all(abs(step_a[t] - step_b[t]) < 0.05 for t in common), (step_a, step_b)


def sentence_of(words: int) -> str:
    return " ".join(["the red ball is on the table"] * (words // 7 + 1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"keep_ratio": 0.5, "keep_tokens": 3}, "keep_tokens"),
        ({"mi_tau": -1.0}, "mi_tau"),
        ({"pruning_method": "magic"}, "pruning_method"),
        ({"mipruner": {"params": {}}}, "mipruner"),
        ({"keep_ration": 0.5}, "keep_ration"),  # a typo is refused, never handed to Hugging Face
    ],
)
def test_bad_parameter_is_rejected_and_engine_keeps_serving(
    h: Harness, kwargs: dict[str, Any], field: str
) -> None:
    img = image(IMAGE_SIZES[h.arch]["square"], seed=61)
    with pytest.raises(ValueError, match=field):
        h.run([h.request(images=[img], **kwargs)], max_tokens=1)
    ok = h.run([h.request(images=[img], keep_ratio=0.5)], max_tokens=1)[0]
    assert ok.outputs[0].token_ids
    assert math.isfinite(len(ok.prompt_token_ids))


# -- pruning_detail (issue 21) -------------------------------------------------------------------


def detail_files(h: Harness) -> set[str]:
    assert h.detail_dir is not None
    return {p.name for p in h.detail_dir.glob("*.json")}


def run_with_detail(h: Harness, req: dict[str, Any]) -> tuple[Any, list[Any], list[dict]]:
    """One request that asks ``pruning_detail``: its output, the processor's outcome items (the
    processor runs in this process) and, per item, the file the worker wrote for its token."""
    from mipruner_vllm.outcome import collect

    req = {**req, "mm_processor_kwargs": {**req["mm_processor_kwargs"], "pruning_detail": True}}
    before = detail_files(h)
    with collect() as outcome:
        out = h.run([req], max_tokens=1)[0]
    items = outcome.items
    names = [f"{item.detail_token:016x}.json" for item in items]
    # Exactly one file per item, each the item's own token; nothing else appeared.
    assert detail_files(h) - before == set(names) and len(set(names)) == len(items), names
    assert h.detail_dir is not None
    records = [json.loads((h.detail_dir / name).read_text()) for name in names]
    return out, items, records


def placeholder_runs(h: Harness, token_ids: list[int]) -> list[int]:
    """Lengths of the runs of media placeholder tokens in a prompt, in order."""
    media = h.media_token_ids()
    runs: list[int] = []
    previous = False
    for token in token_ids:
        inside = token in media
        if inside and previous:
            runs[-1] += 1
        elif inside:
            runs.append(1)
        previous = inside
    return runs


def selectable_kept(selection: dict[str, Any]) -> list[int]:
    """A debug record's kept rows as indices among the item's selectable rows (what the detail
    reports: LLaVA-NeXT's always-kept row newlines are not counted)."""
    fixed = set(selection["fixed"])
    rows = [r for r in range(selection["n_visual"] + selection["n_fixed"]) if r not in fixed]
    position = {row: i for i, row in enumerate(rows)}
    return [position[r] for r in selection["kept"] if r not in fixed]


def check_server_entry(item: Any, record: dict[str, Any]) -> list[int]:
    """What the API server would put in ``usage.pruning_detail`` for the item: accepted whole."""
    from mipruner_vllm import detail

    entry, used = detail.item_entry(
        item.modality, item.n_visual, item.n_kept, item.grid, record, detail.MAX_RESPONSE_INDICES
    )
    assert "omitted" not in entry and used == item.n_kept, entry
    if item.grid is not None:
        t, gh, gw = item.grid
        assert t * gh * gw == item.n_visual
    assert entry["kept"] == sorted(set(entry["kept"])) and entry["kept"][-1] < item.n_visual
    return entry["kept"]


def test_pruning_detail_is_the_workers_selection_per_image(h: Harness) -> None:
    """Pruned and unpruned, one image and two: one file per item, the indices the worker kept
    (its debug record, the same selection), filling exactly the item's placeholders."""
    sizes = IMAGE_SIZES[h.arch]
    img = image(sizes["square"], seed=131)
    tail = h.tail()
    out, [item], [record] = run_with_detail(
        h, h.request("Where is the kite?", images=[img], keep_ratio=0.5)
    )
    [selection] = tail.new()
    kept = check_server_entry(item, record)
    assert record["kept"] == kept == selectable_kept(selection)
    assert record["method"] == "mi" and record["fallback"] is None
    assert record["n_visual"] == selection["n_visual"] == item.n_visual
    assert len(kept) == item.n_kept == n_keep(item.n_visual, keep_ratio=0.5) < item.n_visual
    n_fixed = selection["n_fixed"]
    assert (n_fixed > 0) == (h.arch == "llava_next")
    assert placeholder_runs(h, out.prompt_token_ids) == [len(kept) + n_fixed]
    assert (item.grid is None) == (h.arch == "llava_next")

    # keep_ratio 1: nothing selected (no debug record), every index reported, every placeholder.
    out, [item], [record] = run_with_detail(
        h, h.request("Where is the kite?", images=[img], keep_ratio=1.0)
    )
    assert not tail.new()
    assert record["kept"] is None and record["method"] == "none"
    assert check_server_entry(item, record) == list(range(item.n_visual))
    assert placeholder_runs(h, out.prompt_token_ids) == [item.n_visual + n_fixed]

    # Two images of two shapes in one request: two files, in prompt order, each its own.
    imgs = [image(sizes["square"], seed=132), image(sizes["wide"], seed=133)]
    out, items, records = run_with_detail(
        h, h.request("Compare the two images.", images=imgs, keep_tokens=3)
    )
    selections = tail.new()
    assert len(items) == len(records) == len(selections) == 2
    for item, record, selection in zip(items, records, selections, strict=True):
        assert check_server_entry(item, record) == selectable_kept(selection)
        assert len(record["kept"]) == item.n_kept == 3
    fixed = sum(s["n_fixed"] for s in selections)
    assert sum(placeholder_runs(h, out.prompt_token_ids)) == 6 + fixed


@pytest.mark.parametrize("arch", QWEN, indirect=True)
def test_pruning_detail_of_a_video(h: Harness) -> None:
    """A video is one item. Qwen2/2.5-VL select it whole over its ``t`` temporal tokens;
    Qwen3-VL and Qwen3.5 frame by frame, and report the same per-item indices, frame
    ``f = kept // (h * w)``: each frame's share fills that frame's placeholder run, and for the
    random baseline the indices are exactly each frame's own draw (``seed + f``) offset by
    ``f * h * w``, recomputed here."""
    from mipruner_vllm.pruning.reference import select_random

    vid = video(h.arch, frames=4, seed=141)
    tail = h.tail()
    out, [item], [record] = run_with_detail(h, h.request("What moves?", vid=vid, keep_ratio=0.5))
    [selection] = tail.new()
    kept = check_server_entry(item, record)
    assert item.modality == "video" and kept == record["kept"] == selection["kept"]
    assert record["method"] == "mi" and record["fallback"] is None
    t, gh, gw = item.grid
    assert t > 1 and t * gh * gw == item.n_visual == selection["n_visual"]
    runs = placeholder_runs(h, out.prompt_token_ids)
    if h.arch in QWEN3_VISION:
        # One placeholder run per frame (each after its timestamp), the frame's share each.
        assert selection["frames"] == t
        shares = PruningParams(keep_ratio=0.5).n_keep_per_frame(t, gh * gw)
        assert [sum(1 for i in kept if i // (gh * gw) == f) for f in range(t)] == shares
        assert runs == shares
    else:
        assert selection["frames"] == 1 and runs == [len(kept)]
        assert len(kept) == n_keep(item.n_visual, keep_ratio=0.5)

    _, [item], [record] = run_with_detail(
        h,
        h.request("What moves?", vid=vid, keep_ratio=0.5, pruning_method="random", pruning_seed=9),
    )
    assert record["method"] == "random" and tail.new()
    kept = check_server_entry(item, record)
    if h.arch in QWEN3_VISION:
        per_frame = gh * gw
        shares = PruningParams(keep_ratio=0.5).n_keep_per_frame(t, per_frame)
        expected = [
            i + f * per_frame
            for f, share in enumerate(shares)
            for i in select_random(per_frame, share, 9 + f).tolist()
        ]
    else:
        expected = select_random(item.n_visual, n_keep(item.n_visual, keep_ratio=0.5), 9).tolist()
    assert kept == expected
