# SPDX-License-Identifier: Apache-2.0
"""The plugin's multimodal processors without an engine: hashes, placeholders, query text.

vLLM keys its processor cache, encoder cache and prefix-cache blocks by each item's ``mm_hash``.
These tests pin the hash contract of issue 4: every input of the selection (query tokens,
method, parameters) changes the hash of a pruned item; equal settings written differently hash
equal; an unpruned request hashes exactly as stock vLLM. They run the real processors on the
tiny demo checkpoints in-process (a few seconds each).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mipruner_vllm.errors import PruningParameterError
from mipruner_vllm.families import FAMILIES, by_architecture

pytestmark = [pytest.mark.vllm]

pytest.importorskip("vllm")

ARCHS = list(FAMILIES)


def _processor(checkpoint: str, plugin: bool) -> Any:
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from mipruner_vllm.integration.launch import engine_overrides
    from mipruner_vllm.plugin import register

    register()
    overrides = engine_overrides(checkpoint)["hf_overrides"] if plugin else {}
    config = ModelConfig(model=checkpoint, hf_overrides=overrides, max_model_len=1024)
    return MULTIMODAL_REGISTRY.create_processor(config)


@pytest.fixture(scope="module", params=ARCHS)
def procs(request: pytest.FixtureRequest, demo_model_dir: Any) -> tuple[Any, Any]:
    checkpoint = str(demo_model_dir(request.param))
    return _processor(checkpoint, plugin=True), _processor(checkpoint, plugin=False)


def _image(seed: int = 0) -> Any:
    from PIL import Image

    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (56, 112, 3), dtype=np.uint8)
    )


def run(proc: Any, question: str, **kwargs: Any) -> tuple[str, int]:
    tokenizer = proc.info.get_tokenizer()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    out = proc(prompt, proc.info.parse_mm_data({"image": _image()}), hf_processor_mm_kwargs=kwargs)
    return out["mm_hashes"]["image"][0], len(out["prompt_token_ids"])


def test_unpruned_requests_hash_like_stock(procs: tuple[Any, Any]) -> None:
    plugin, stock = procs
    assert run(plugin, "What is this?") == run(stock, "What is this?")
    assert run(plugin, "What is this?", keep_ratio=1.0) == run(stock, "What is this?")
    assert run(plugin, "What is this?", pruning_method="none") == run(stock, "What is this?")
    # Stock vLLM does not hash the question: unpruned items share caches across questions.
    assert run(plugin, "What is this?")[0] == run(plugin, "Describe it.")[0]


def test_every_selection_input_is_hashed(procs: tuple[Any, Any]) -> None:
    plugin, _ = procs
    base = run(plugin, "What is this?", keep_ratio=0.25)[0]
    assert run(plugin, "Describe it.", keep_ratio=0.25)[0] != base  # query tokens
    assert run(plugin, "What is this?", keep_ratio=0.5)[0] != base
    assert run(plugin, "What is this?", keep_ratio=0.25, mi_lambda=0.5)[0] != base
    assert run(plugin, "What is this?", keep_ratio=0.25, mi_tau=0.2)[0] != base
    assert run(plugin, "What is this?", keep_ratio=0.25, pruning_method="divprune")[0] != base
    assert run(plugin, "What is this?", keep_tokens=4)[0] != base
    # Normalised: order, int vs float and explicit defaults do not change the hash.
    assert run(plugin, "What is this?", mi_lambda=1, keep_ratio=0.25)[0] == base
    assert run(plugin, "What is this?", keep_ratio=0.25, mi_tau=0.1, pruning_method="mi")[0] == base
    assert run(plugin, "What is this?", keep_ratio=0.25)[0] == base


def test_placeholders_and_outcome(procs: tuple[Any, Any]) -> None:
    from mipruner_vllm.outcome import collect

    plugin, _ = procs
    with collect() as full:
        _, n_full = run(plugin, "What is this?")
    with collect() as pruned:
        _, n_pruned = run(plugin, "What is this?", keep_tokens=2)
    (item,) = pruned.items
    assert item.n_kept == 2 and item.method == "mi"
    assert n_full - n_pruned == item.n_visual - 2
    assert full.items[0].n_kept == full.items[0].n_visual and full.items[0].method == "none"


def test_bad_parameters_are_rejected(procs: tuple[Any, Any]) -> None:
    plugin, _ = procs
    with pytest.raises(PruningParameterError, match="keep_ratio"):
        run(plugin, "What is this?", keep_ratio=0.0)
    with pytest.raises(PruningParameterError, match="mi_lambda"):
        run(plugin, "What is this?", mi_lambda=True)
    with pytest.raises(PruningParameterError, match="mipruner"):
        run(plugin, "What is this?", mipruner={"params": {}})


def test_pruning_keys_never_reach_hugging_face(procs: tuple[Any, Any]) -> None:
    plugin, _ = procs
    # The HF processor loader is an lru_cache keyed by the kwargs: stripping keeps one instance.
    assert (
        plugin.info.get_hf_processor(keep_ratio=0.5, mi_tau=0.3) is plugin.info.get_hf_processor()
    )


def test_query_text_is_the_question_only(procs: tuple[Any, Any]) -> None:
    from mipruner_vllm.integration.query import query_token_ids

    plugin, _ = procs
    tokenizer = plugin.info.get_tokenizer()
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Where is the red ball?"}],
        },
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    texts = query_token_ids(tokenizer, ids, plugin._mipruner_media_tokens())
    assert tokenizer.decode(texts["image"][0]) == "Where is the red ball?"
    # An image without text gives an empty query (N_T = 0; uniform-stride rule downstream).
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert query_token_ids(
        tokenizer,
        tokenizer.encode(prompt, add_special_tokens=False),
        plugin._mipruner_media_tokens(),
    ) == {"image": [[]]}


# -- content keys of the encoder-output store (issue 11) -------------------------------------


def _content_key(out: Any, modality: str = "image", index: int = 0) -> bytes | None:
    from mipruner_vllm.integration.fields import content_field, decode_content_keys

    field = out["mm_kwargs"][modality][index][content_field(modality)].data
    return decode_content_keys(field.reshape(1, -1), 1)[0]


def _process(proc: Any, messages: list[dict[str, Any]], images: list[Any], **kwargs: Any) -> Any:
    tokenizer = proc.info.get_tokenizer()
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    data = {"image": images if len(images) > 1 else images[0]}
    return proc(prompt, proc.info.parse_mm_data(data), hf_processor_mm_kwargs=kwargs)


def _ask(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def test_store_key_is_the_stock_hash_whatever_the_question_and_budget(
    procs: tuple[Any, Any],
) -> None:
    from mipruner_vllm.integration.fields import decode_content_keys, encode_content_key

    plugin, stock = procs
    stock_hash = _process(stock, _ask("What is this?"), [_image()])["mm_hashes"]["image"][0]
    expected = decode_content_keys(encode_content_key(stock_hash).reshape(1, -1), 1)[0]
    for question, kwargs in [
        ("What is this?", {}),
        ("Describe it.", {"keep_ratio": 0.25}),
        ("Why?", {"keep_tokens": 3}),
    ]:
        out = _process(plugin, _ask(question), [_image()], **kwargs)
        assert _content_key(out) == expected, (question, kwargs)
    # Other media never share an entry.
    assert (
        _content_key(_process(plugin, _ask("What is this?"), [_image(seed=1)], keep_ratio=0.25))
        != expected
    )


#: A processor setting that is not a pruning parameter and changes the encoded pixels, per
#: family: the Qwen resize bound; LLaVA's normalisation (its CLIP tower takes one fixed size).
OTHER_SETTING = {"qwen": {"max_pixels": 28 * 28 * 4}, "llava": {"do_normalize": False}}


def test_other_processor_settings_never_share_an_entry(procs: tuple[Any, Any]) -> None:
    plugin, _ = procs
    family = "qwen" if "qwen" in type(plugin).__name__.lower() else "llava"
    base = _process(plugin, _ask("What is this?"), [_image()], keep_ratio=0.25)
    other = _process(plugin, _ask("What is this?"), [_image()], keep_ratio=0.25,
                     **OTHER_SETTING[family])  # fmt: skip
    pixels = [out["mm_kwargs"]["image"][0]["pixel_values"].data for out in (base, other)]
    assert pixels[0].shape != pixels[1].shape or not torch.equal(*pixels), "setting had no effect"
    assert _content_key(other) != _content_key(base)


def test_same_image_in_two_turns_is_two_items_selected_for_their_own_questions(
    procs: tuple[Any, Any],
) -> None:
    from mipruner_vllm.integration.fields import text_field

    plugin, _ = procs
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What colour is the car?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "How many wheels?"}],
        },
    ]
    out = _process(plugin, messages, [_image(), _image()], keep_ratio=0.25)
    hashes = out["mm_hashes"]["image"]
    assert hashes[0] != hashes[1]  # so vLLM's encoder cache does not give item 2 item 1's selection
    tokenizer = plugin.info.get_tokenizer()
    texts = [
        tokenizer.decode(out["mm_kwargs"]["image"][i][text_field("image")].data.tolist())
        for i in (0, 1)
    ]
    assert texts == ["What colour is the car?", "How many wheels?"]
    assert _content_key(out, index=0) == _content_key(out, index=1) is not None  # one tower run
    # An item's identity depends on its own question only, not on the other turns'.
    single = _process(plugin, _ask("How many wheels?"), [_image()], keep_ratio=0.25)
    assert single["mm_hashes"]["image"][0] == hashes[1]


def test_client_uuids_are_never_store_keys(procs: tuple[Any, Any]) -> None:
    plugin, _ = procs
    tokenizer = plugin.info.get_tokenizer()
    prompt = tokenizer.apply_chat_template(
        _ask("What is this?"), tokenize=False, add_generation_prompt=True
    )
    out = plugin(
        prompt,
        plugin.info.parse_mm_data({"image": _image()}),
        hf_processor_mm_kwargs={"keep_ratio": 0.25},
        mm_uuid_items={"image": ["client-chosen-id"]},
    )
    assert _content_key(out) is None


# -- the token grid of usage.pruning_detail (issue 21) -----------------------------------------


def _detail_items(
    proc: Any, content: list[dict[str, Any]], data: dict[str, Any], **extra: Any
) -> list[Any]:
    """The outcome items of one request that asks ``pruning_detail`` (keep ratio 0.5)."""
    from mipruner_vllm.outcome import collect

    tokenizer = proc.info.get_tokenizer()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    with collect() as outcome:
        proc(
            prompt,
            proc.info.parse_mm_data(data),
            hf_processor_mm_kwargs={"keep_ratio": 0.5, "pruning_detail": True, **extra},
        )
    return outcome.items


def test_detail_grid_spans_the_items_visual_tokens(procs: tuple[Any, Any]) -> None:
    """Every item of a detail request has its own token, and ``t * h * w == N_V`` wherever the
    family reports a grid: images of several shapes, and a video for the Qwen family (Qwen3-VL
    and Qwen3.5 lay a video out frame by frame; the grid is still the whole item's)."""
    from helpers.media import decoded_video
    from PIL import Image

    plugin, _ = procs
    family = by_architecture(plugin.info.get_hf_config().architectures[0])
    assert family is not None
    rng = np.random.default_rng(5)
    shapes = [(56, 112), (112, 56), (112, 112)]  # (height, width): wide, tall, square
    images = [
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)) for shape in shapes
    ]
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": "What is this?"}]
    items = _detail_items(plugin, content, {"image": images})
    media = [("image", item) for item in items]
    if family.video:
        side = 128 if family.key in ("qwen3_vl", "qwen3_5", "qwen3_5_moe") else 112
        content = [{"type": "video"}, {"type": "text", "text": "What moves?"}]
        (item,) = _detail_items(plugin, content, {"video": decoded_video(3, 4, side)})
        media.append(("video", item))
        assert item.grid is not None and item.grid[0] > 1, item  # several temporal tokens
        assert not item.detail_scores
        video = {"video": decoded_video(3, 4, side)}
        (scored,) = _detail_items(plugin, content, video, pruning_detail_scores=True)
        assert scored.detail_scores and scored.grid == item.grid
    assert len(media) == len(images) + int(family.video)
    assert len({item.detail_token for _, item in media}) == len(media) and all(
        item.detail_token for _, item in media
    )
    for modality, item in media:
        assert item.modality == modality
        if family.key == "llava_next":
            # Base tile plus anyres tiles: no single grid, the indices are flat.
            assert item.grid is None, item
            continue
        assert item.grid is not None, (modality, item)
        t, h, w = item.grid
        assert t * h * w == item.n_visual, (modality, item)
        assert min(t, h, w) >= 1
        if family.key == "llava":
            # CLIP at a fixed input size: one square frame whatever the picture's shape.
            assert t == 1 and h == w
