# SPDX-License-Identifier: Apache-2.0
"""Tensor parallel 2 on CPU gives what tensor parallel 1 gives (issue 22, item 1).

vLLM's CPU backend runs tensor parallel with one worker process per rank (gloo/shared-memory
collectives), so the plugin's worker side runs once per rank here exactly as on GPUs: every rank
runs the tower on its shard, keeps its own encoder store and selects its own kept set. The ranks
must agree on every store hit and miss (a rank that misses while another hits would wait in the
tower's collectives forever) and on every kept set (the LLM's shards must see the same tokens).

For each family, one engine with tensor parallel 1 and then one with tensor parallel 2 (one rank
per core, ``VLLM_CPU_OMP_THREADS_BIND``) serve the same sequence of requests: images, a
follow-up question about a stored image (a store hit), videos and their follow-ups (Qwen
family), and one batch of mixed requests (methods, budgets, an unpruned one, a text-only one, a
repeated image). The engines run in float32, so that the sharded and unsharded matmuls differ
only in the order of float32 sums (in bfloat16 the all-reduce rounds the partial sums to 8 bits,
which could move a near-tie between scores; that is not tested here). Compared, per request:
the generated tokens, the prompt length (the usage: visual tokens kept), and every kept set
(``selections.jsonl``, one line per item per rank); per encoder batch: the content keys, hits,
misses and the bytes and entries the store holds, on each rank (``encoder.jsonl``, one line per
batch per rank, told apart by pid).

Marked ``parallel``: two worker processes want both cores, so CI runs these in their own step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.media import decoded_video

from mipruner_vllm.outcome import collect

pytestmark = [pytest.mark.vllm, pytest.mark.parallel, pytest.mark.slow]

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe")
QWEN3_VISION = ("qwen3_vl", "qwen3_5", "qwen3_5_moe")
#: The families run by default (tiny checkpoints; ``MIPRUNER_TEST_TP_ARCHS`` picks others): one
#: Qwen (M-RoPE, video) and one LLaVA, about 4 minutes each on 2 cores. Every family's tiny
#: checkpoint shards over 2 ranks: 4 attention heads and 2 or 4 KV heads in the LLM, 2 vision heads.
ARCHS = os.environ.get("MIPRUNER_TEST_TP_ARCHS", "qwen2_5_vl,llava").split(",")
#: The demo checkpoint size (``MIPRUNER_TEST_TP_SIZE=mid``: the real vision towers, by hand).
SIZE = os.environ.get("MIPRUNER_TEST_TP_SIZE", "tiny")
#: A store that holds every item of the steps (the mid checkpoints' outputs are ~100x larger).
STORE_BYTES = "1000000" if SIZE == "tiny" else "256000000"
SIDE = {"llava": 56, "llava_next": 56}
ENGINE = {"max_num_batched_tokens": 256, "max_num_seqs": 8}
#: vLLM's CPU Gated DeltaNet attention (Qwen3.5's linear layers) runs in bfloat16 only
#: ("CPU GDN attention requires BF16."); every other family runs in float32. (The tiny Qwen3.5
#: checkpoints still cannot run tensor parallel 2: their one linear-attention head does not split
#: over 2 ranks, and vLLM's Gated DeltaNet projection asserts divisibility. See docs/deploy.md.)
BF16_ONLY = ("qwen3_5", "qwen3_5_moe")


def image(arch: str, seed: int) -> Any:
    from PIL import Image

    side = SIDE.get(arch, 128 if arch in QWEN3_VISION else 112)
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    )


def video(arch: str, seed: int) -> Any:
    return decoded_video(seed, 4, 128 if arch in QWEN3_VISION else 112)


def request(tokenizer: Any, question: str, images: list, vid: Any = None, **kwargs: Any) -> dict:
    content: list[dict] = [{"type": "image"}] * len(images)
    if vid is not None:
        content.append({"type": "video"})
    if question:
        content.append({"type": "text", "text": question})
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    data: dict[str, Any] = {}
    if images:
        data["image"] = images if len(images) > 1 else images[0]
    if vid is not None:
        data["video"] = vid
    req: dict[str, Any] = {"prompt": prompt}
    if data:
        req["multi_modal_data"] = data
    if kwargs:
        req["mm_processor_kwargs"] = kwargs
    return req


def steps(arch: str, tokenizer: Any) -> list[tuple[str, list[dict]]]:
    """The requests, in the order both engines get them; each step is one ``generate`` call."""
    t = tokenizer
    out = [
        ("image", [request(t, "What is in the picture?", [image(arch, 1)], keep_ratio=0.25)]),
        ("follow_up", [request(t, "Which colour is it?", [image(arch, 1)], keep_ratio=0.25)]),
    ]
    if arch in QWEN:
        out += [
            ("video", [request(t, "What moves?", [], video(arch, 7), keep_ratio=0.25)]),
            ("video_follow_up", [request(t, "What next?", [], video(arch, 7), keep_tokens=5)]),
        ]
    mixed = [
        request(
            t, "Where is the edge?", [image(arch, 2)], keep_tokens=3, pruning_method="divprune"
        ),
        request(t, "Anything red?", [image(arch, 1)], keep_ratio=0.5, mi_lambda=0.5),
        request(t, "Describe it.", [image(arch, 3)], keep_ratio=0.25, pruning_method="similarity"),
        request(
            t, "Count them.", [image(arch, 4)], keep_ratio=0.25, pruning_method="trimtokenator"
        ),
        request(t, "Random pick.", [image(arch, 2)], keep_ratio=0.5, pruning_method="random"),
        request(t, "Keep all of it.", [image(arch, 5)], keep_ratio=1.0),
        request(t, "Only text here, no media at all.", []),
    ]
    if arch in QWEN:
        mixed.append(request(t, "And the clip?", [], video(arch, 8), keep_ratio=0.25))
    out.append(("mixed", mixed))
    # Asks pruning_detail: a new question about a stored image (a store hit), and a stored video.
    detail = [request(t, "Where is the corner?", [image(arch, 1)], keep_ratio=0.25)]
    if arch in QWEN:
        detail.append(request(t, "What turns?", [], video(arch, 7), keep_ratio=0.5))
    for req in detail:
        req["mm_processor_kwargs"]["pruning_detail"] = True
    out.append(("detail", detail))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def by_rank(records: list[dict]) -> list[list[dict]]:
    """Records split per worker process, in the order each wrote them (ranks by first line)."""
    ranks: dict[int, list[dict]] = {}
    for record in records:
        ranks.setdefault(record.pop("pid"), []).append(record)
    return list(ranks.values())


def run_engine(
    engine_tools: Any, arch: str, checkpoint: str, tp: int, debug_dir: Path
) -> dict[str, Any]:
    """Outputs and worker records of one engine over :func:`steps`; the engine is shut down."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    limits = {"image": 1, "video": 1} if arch in QWEN else {"image": 1}
    # One core per rank (the machine's two); tensor parallel 1 keeps vLLM's default binding.
    bind = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"} if tp == 2 else {}
    saved = {k: os.environ.get(k) for k in bind}
    os.environ.update(bind)
    try:
        llm = engine_tools.make_llm(
            checkpoint,
            plugin=True,
            debug_dir=debug_dir,
            settings={"encoder_store_bytes": STORE_BYTES, "detail_dir": str(debug_dir / "detail")},
            tensor_parallel_size=tp,
            limit_mm_per_prompt=limits,
            dtype="bfloat16" if arch in BF16_ONLY else "float32",
            **ENGINE,
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        params = SamplingParams(max_tokens=4, temperature=0.0)
        outputs: dict[str, list] = {}
        items: dict[str, list] = {}
        for name, reqs in steps(arch, tokenizer):
            with collect() as outcome:  # the processor runs in this process
                outs = llm.generate(reqs, params, use_tqdm=False)
            outputs[name] = [(list(o.outputs[0].token_ids), len(o.prompt_token_ids)) for o in outs]
            items[name] = outcome.items
        files = sorted(p.name for p in (debug_dir / "detail").iterdir())
    finally:
        engine_tools.shutdown(llm)
    return {
        # The detail step's items (prompt order) with what the worker wrote for each.
        "detail": [
            (
                item,
                json.loads((debug_dir / "detail" / f"{item.detail_token:016x}.json").read_text()),
            )
            for item in items["detail"]
        ],
        "detail_files": files,
        "outputs": outputs,
        "selections": by_rank(read_jsonl(debug_dir / "selections.jsonl")),
        "encoder": by_rank(read_jsonl(debug_dir / "encoder.jsonl")),
    }


@pytest.fixture(scope="module", params=ARCHS)
def runs(
    request: pytest.FixtureRequest,
    demo_model_dir: Any,
    engine_tools: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[Any, Any]:
    arch = request.param
    checkpoint = str(demo_model_dir(arch, SIZE))
    runs: dict[Any, Any] = {
        tp: run_engine(
            engine_tools, arch, checkpoint, tp, tmp_path_factory.mktemp(f"{arch}-tp{tp}")
        )
        for tp in (1, 2)
    }
    # Items that prune: two images, two videos (Qwen), the mixed step's pruned items (all but
    # the unpruned image and the text-only request), and the detail step's image (and video).
    runs["pruned_items"] = 2 + (2 + 1 if arch in QWEN else 0) + 5 + (2 if arch in QWEN else 1)
    return runs


def test_every_answer_and_usage_equals_tensor_parallel_1(runs: dict) -> None:
    tp1, tp2 = runs[1]["outputs"], runs[2]["outputs"]
    assert tp2 == tp1
    # The pruned requests really were pruned (shorter prompts than the unpruned request's).
    assert tp1["image"][0][1] < tp1["mixed"][5][1]


def test_both_ranks_keep_the_same_tokens_as_tensor_parallel_1(runs: dict) -> None:
    (single,) = runs[1]["selections"]
    ranks = runs[2]["selections"]
    assert len(ranks) == 2, "expected one selection log per tensor-parallel rank"
    assert ranks[0] == ranks[1]

    # Within one encoder batch the items come in the scheduler's order, which is the same on
    # both engines for these fixed steps; compare as multisets anyway, keyed by what was asked.
    def key(r: dict) -> str:
        return json.dumps(r, sort_keys=True)

    assert sorted(map(key, ranks[0])) == sorted(map(key, single))
    assert len(single) == runs["pruned_items"]  # every pruned item of every step was selected


def test_both_ranks_hold_the_same_store(runs: dict) -> None:
    (single,) = runs[1]["encoder"]
    ranks = runs[2]["encoder"]
    assert len(ranks) == 2
    assert ranks[0] == ranks[1]  # keys, hits, misses, evictions, bytes and entries, batch by batch
    hits = sum(b["hits"] for b in ranks[0])
    assert hits == sum(b["hits"] for b in single) and hits >= 2  # the follow-ups hit the store
    assert ranks[0][-1]["store_entries"] == single[-1]["store_entries"] > 0
    assert ranks[0][-1]["store_bytes"] == single[-1]["store_bytes"]


def test_detail_is_written_once_per_item_and_equals_tensor_parallel_1(runs: dict) -> None:
    """``pruning_detail`` with tensor parallel 2: one file per item (only rank 0 writes; the
    other rank selects the same), holding what tensor parallel 1 reported, store hits included."""
    from mipruner_vllm import detail

    for tp in (1, 2):
        items = runs[tp]["detail"]
        assert len(items) == len(runs[tp]["detail_files"]) == len(runs[tp]["outputs"]["detail"])
        assert (
            sorted(f"{item.detail_token:016x}.json" for item, _ in items)
            == runs[tp]["detail_files"]
        )
        for item, record in items:
            entry, _ = detail.item_entry(
                item.modality,
                item.n_visual,
                item.n_kept,
                item.grid,
                record,
                detail.MAX_RESPONSE_INDICES,
            )
            assert "omitted" not in entry and len(entry["kept"]) == item.n_kept < item.n_visual
    assert [r for _, r in runs[2]["detail"]] == [r for _, r in runs[1]["detail"]]
    assert [(i.modality, i.n_visual, i.n_kept, i.grid) for i, _ in runs[2]["detail"]] == [
        (i.modality, i.n_visual, i.n_kept, i.grid) for i, _ in runs[1]["detail"]
    ]
    # The detail step's items were store hits on every rank (the image and video were stored).
    last = runs[2]["encoder"]
    assert all(batch[-1]["hits"] >= 1 for batch in last), last
