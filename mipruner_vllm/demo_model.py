# SPDX-License-Identifier: Apache-2.0
"""Deterministic, randomly initialised demo checkpoints that vLLM loads offline.

Why: there is no model hub on developer machines or in CI, yet tests, benchmarks and the
server's embedded default need real checkpoint directories of every supported family. This
module writes one from scratch: ``config.json`` + ``model.safetensors`` (seeded random weights,
built with the transformers model classes), a byte-level BPE tokenizer trained with
``tokenizers`` on a fixed built-in corpus plus the family's special tokens, the family's chat
template, and ``processor_config.json`` (image and, for the Qwen family, video processor).

Two sizes:

* ``tiny`` (tests): LLM hidden 128, 4 heads (head_dim 32, the smallest head size vLLM's CPU
  attention accepts), 2 layers, a 2-layer vision tower of width 64, and processor pixel limits
  so that an image yields 4..16 visual tokens (Qwen2/2.5-VL: 56..112 px, Qwen3-VL with its
  16-px patches: 64..128 px; LLaVA-1.5: 56 px -> 16 tokens; LLaVA-NeXT: 28 px tiles, a 56 px
  image -> 24 tokens). A 4-frame Qwen video of 112 px (Qwen3-VL: 128 px) is 32 tokens.
* ``mid`` (benchmarks): the real vision towers and real processor pixel limits (an 896x896
  image is 1,024 visual tokens on Qwen2-VL / Qwen2.5-VL, 784 on Qwen3-VL; LLaVA 336 px -> 576),
  an 8-layer LLM of hidden 1,536 (12 heads of 128).

Both use the same tokenizer (1,024 ids, special tokens first: Qwen ``<|endoftext|>`` 0,
``<|im_start|>`` 1, ``<|im_end|>`` 2 (eos), ``<|vision_start|>`` 3, ``<|vision_end|>`` 4,
``<|vision_pad|>`` 5, ``<|image_pad|>`` 6, ``<|video_pad|>`` 7; LLaVA ``<unk>`` 0, ``<s>`` 1,
``</s>`` 2 (eos), ``<pad>`` 3, ``<image>`` 4) and bf16 weights.

Feeding video to vLLM 0.32 on CPU (no torchcodec): ``multi_modal_data={"video": (frames,
metadata)}`` with ``frames`` a (T, H, W, 3) uint8 array and ``metadata`` a dict with ``fps``,
``duration``, ``total_num_frames``, ``frames_indices``, ``video_backend`` and
``do_sample_frames=False`` (Qwen2.5-VL and Qwen3-VL reject bare arrays); or in chat form a
``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`` part, which vLLM
decodes with OpenCV.

CLI: ``mipruner-vllm demo-model --arch qwen2_5_vl --out DIR [--size tiny|mid]``.

The same ``(arch, size)`` always gives the same bytes (seeded init, deterministic tokenizer
training, fixed templates), so checkpoints can be cached by name (:func:`ensure_demo_model`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "BUILDER_VERSION",
    "DEMO_ARCHS",
    "DEMO_SIZES",
    "build_demo_model",
    "checkpoint_digest",
    "demo_cache_root",
    "ensure_demo_model",
]

# Bump whenever the bytes a build writes change: it is part of the cache directory name, so a
# stale cached checkpoint is never served by a newer builder.
BUILDER_VERSION = 2

DEMO_ARCHS: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next")
DEMO_SIZES: tuple[str, ...] = ("tiny", "mid")

_SEED = 1234
_DTYPE = "bfloat16"

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Fixed training corpus: English sentences of the kind the demo prompts use (questions about an
# image), so a question tokenizes into several ordinary tokens rather than bytes. Never edit it
# without bumping BUILDER_VERSION: the tokenizer (and so every checkpoint) depends on it.
_CORPUS_SENTENCES = (
    "What is in this image?",
    "What is shown in the picture?",
    "Describe the image in detail.",
    "Describe this video in one sentence.",
    "What happens in the video?",
    "How many people are in the photo?",
    "How many cars are parked on the street?",
    "What color is the car on the left?",
    "What color is the sky in this picture?",
    "Is there a dog in the image?",
    "Is the cat sitting on the table or under the chair?",
    "Where is the red ball?",
    "Which animal is the largest?",
    "What is the man holding in his hand?",
    "What is the woman wearing?",
    "What time of day is it?",
    "What is written on the sign?",
    "Read the text on the board.",
    "Count the apples on the plate.",
    "Is it raining outside?",
    "What is the weather like?",
    "Answer the question using a single word or phrase.",
    "Answer with yes or no.",
    "Please look at the picture and answer the question.",
    "The image shows a small house next to a large tree.",
    "A black dog is running across the green grass.",
    "Two children are playing with a yellow ball in the park.",
    "A red car is parked in front of a white building.",
    "The sky is blue and there are a few white clouds.",
    "A cat is sleeping on a brown sofa near the window.",
    "There are three apples and two oranges on the table.",
    "A woman in a blue dress is reading a book.",
    "A man is riding a bicycle down the road.",
    "The street is busy with people, cars and buses.",
    "A plate of food with rice, vegetables and chicken.",
    "The mountains are covered with snow in the winter.",
    "A boat is sailing on the calm water of the lake.",
    "The train is arriving at the station in the morning.",
    "A bird is sitting on the branch of an old tree.",
    "The kitchen has a white table and four wooden chairs.",
    "A group of friends is sitting around a fire at night.",
    "The sign says stop in large white letters.",
    "The chart shows that sales increased in the second year.",
    "The document contains a table with numbers and names.",
    "The person on the right is smiling and waving.",
    "The video shows a person walking into the room and opening the door.",
    "First the ball falls, then it bounces twice and rolls away.",
    "In the first frame the light is green, later it turns red.",
    "The camera moves slowly from left to right across the field.",
    "You are a helpful assistant.",
    "I can see a picture of a city at sunset.",
    "The answer is yes.",
    "The answer is no.",
    "There is one dog, two cats and three birds.",
    "The top left corner of the image is dark.",
    "The bottom right part of the picture is bright.",
    "The object in the center is a round table.",
    "The flowers in the garden are red, yellow and purple.",
    "A phone, a laptop and a cup of coffee are on the desk.",
    "The number on the shirt is seven.",
    "Thank you for the question, here is a short answer.",
)
_CORPUS_WORDS = (
    "a about above across after again against all also an and animal answer any are around as at "
    "away back ball be because before behind below beside between big bird black blue board boat "
    "book both bottom box boy brown building bus but by can car cat center chair chart child "
    "children city clear close clouds coffee color count cup dark day describe desk detail did "
    "different do document does dog door down dress during each eight eleven empty evening every "
    "face far field fire first five flower food for four frame friend from front fruit full game "
    "garden girl give glass good grass green ground group hair hand happy has have he head her "
    "here high him his hold holding horse house how image in inside is it its kind kitchen lake "
    "large last left letter light like little long look low man many middle more morning most "
    "mountain move much near next night nine no not now number object of off old on one only "
    "open or orange other out outside over paper park part people person phone photo picture "
    "place plate play purple question rain read red right river road room round run same scene "
    "second see seven shirt short show sign sitting six sky small snow some square stand station "
    "still stop street sun table tall ten text than that the their them then there these they "
    "thing this three through time to today top train tree two under up video view wall water "
    "we wearing weather what when where which white who why window with woman word write year "
    "yellow yes you young zero"
)

_QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")

# Target size of the trained BPE vocabulary (special tokens included). The corpus is small, so
# training may stop earlier; the config's vocab_size is always exactly len(tokenizer), so no
# sampled id ever falls outside the tokenizer.
_TOKENIZER_VOCAB = 1024

# ---------------------------------------------------------------------------------------------
# Chat templates (fixed per family)
# ---------------------------------------------------------------------------------------------

# Qwen2-VL's published ChatML template: images become <|vision_start|><|image_pad|><|vision_end|>
# and videos <|vision_start|><|video_pad|><|vision_end|>; the processor expands the pads.
_QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-1.5 (llava-hf) style: "USER: <image>\n<question> ASSISTANT:". Images of a turn come
# first, then its text, as in the published llava-hf template; string content is accepted too.
_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# LLaVA-NeXT (llava-v1.6-vicuna) uses the same turn format after Vicuna's system line.
_LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ 'A chat between a curious human and an artificial intelligence assistant. ' }}"
    "{% endif %}" + _LLAVA_CHAT_TEMPLATE
)

# Real processor limits of the published checkpoints (used by ``mid``).
_QWEN2_MIN_PIXELS = 56 * 56
_QWEN2_MAX_PIXELS = 28 * 28 * 16384
_QWEN2_VIDEO_MIN_PIXELS = 128 * 28 * 28
_QWEN2_VIDEO_MAX_PIXELS = 768 * 28 * 28
_OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _corpus() -> list[str]:
    # Repeat the sentences so their merges outrank the word list's; fixed order, fixed counts.
    return [*(_CORPUS_SENTENCES * 4), *_CORPUS_WORDS.split()]


def _train_tokenizer(special_tokens: tuple[str, ...]) -> Any:
    """Byte-level BPE trained on the built-in corpus; special tokens get ids 0..len-1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _hf_tokenizer(family: str) -> Any:
    """A transformers fast tokenizer around the trained ``tokenizers`` model."""
    from transformers import PreTrainedTokenizerFast

    if family == "qwen":
        return PreTrainedTokenizerFast(
            tokenizer_object=_train_tokenizer(_QWEN_SPECIAL_TOKENS),
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            unk_token=None,
            bos_token=None,
            model_max_length=32768,
            extra_special_tokens={},
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(_LLAVA_SPECIAL_TOKENS),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=4096,
        extra_special_tokens={},
    )


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _qwen_text(size: str, ids: dict[str, int], vocab: int, *, qwen3: bool = False) -> dict:
    if size == "tiny":
        text = dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        )
        # head_dim 32 -> mrope sections must sum to head_dim / 2 = 16.
        mrope_section = [4, 6, 6] if not qwen3 else [6, 5, 5]
    else:
        text = dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=8,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
        )
        # head_dim 128 -> 64; the published splits.
        mrope_section = [16, 24, 24] if not qwen3 else [24, 20, 20]
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": 1000000.0 if not qwen3 else 5000000.0,
        "mrope_section": mrope_section,
    }
    if qwen3:
        rope["mrope_interleaved"] = True
        text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    else:
        text["use_sliding_window"] = False
        text["sliding_window"] = None
        text["max_window_layers"] = text["num_hidden_layers"]
    text.update(
        vocab_size=vocab,
        rope_parameters=rope,
        rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype=_DTYPE,
    )
    if qwen3:
        # Qwen3VLTextConfig takes no bos/eos ids; vLLM reads them from the top-level config.
        text.pop("bos_token_id")
        text.pop("eos_token_id")
    return text


def _qwen_vision(arch: str, size: str, out_hidden: int) -> dict:
    tiny = size == "tiny"
    if arch == "qwen2_vl":
        if tiny:
            return dict(depth=2, embed_dim=64, num_heads=2, mlp_ratio=2, hidden_size=out_hidden)
        return dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=out_hidden)
    if arch == "qwen2_5_vl":
        if tiny:
            # window 56 px = one 2x2 merged unit per window row; layer 1 is full attention.
            return dict(
                depth=2,
                hidden_size=64,
                intermediate_size=128,
                num_heads=2,
                out_hidden_size=out_hidden,
                window_size=56,
                fullatt_block_indexes=[1],
                tokens_per_second=2,
            )
        return dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=out_hidden,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        )
    # qwen3_vl: deepstack taps intermediate ViT layers and adds them to the first LLM layers.
    if tiny:
        return dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=out_hidden,
            num_position_embeddings=64,  # an 8x8 learned grid, interpolated per image
            deepstack_visual_indexes=[0, 1],
        )
    return dict(
        depth=27,
        hidden_size=1152,
        intermediate_size=4304,
        num_heads=16,
        out_hidden_size=out_hidden,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[8, 16, 24],
    )


def _llava_parts(arch: str, size: str, ids: dict[str, int], vocab: int) -> tuple[dict, dict]:
    tiny = size == "tiny"
    if tiny:
        text = dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
        )
        vision = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56 if arch == "llava" else 28,
            patch_size=14,
            projection_dim=64,
        )
    else:
        text = dict(
            hidden_size=1536,
            intermediate_size=4096,
            num_hidden_layers=8,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=4096,
        )
        # CLIP ViT-L/14-336, the tower of llava-1.5 and llava-v1.6.
        vision = dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
    text.update(
        model_type="llama",
        vocab_size=vocab,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        dtype=_DTYPE,
    )
    vision.update(model_type="clip_vision_model", hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return text, vision


def _llava_pinpoints(size: str) -> list[list[int]]:
    if size == "tiny":
        return [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]
    return [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _build_config(arch: str, size: str, tokenizer: Any) -> Any:
    import transformers

    qwen = arch.startswith("qwen")
    specials = _QWEN_SPECIAL_TOKENS if qwen else _LLAVA_SPECIAL_TOKENS
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in specials}
    vocab = len(tokenizer)
    if qwen:
        qwen3 = arch == "qwen3_vl"
        text = _qwen_text(size, ids, vocab, qwen3=qwen3)
        vision = _qwen_vision(arch, size, text["hidden_size"])
        cls = {
            "qwen2_vl": transformers.Qwen2VLConfig,
            "qwen2_5_vl": transformers.Qwen2_5_VLConfig,
            "qwen3_vl": transformers.Qwen3VLConfig,
        }[arch]
        config = cls(
            text_config=text,
            vision_config=vision,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
        # vLLM and generation read these from the top level as well as from text_config.
        config.bos_token_id = ids["<|endoftext|>"]
        config.eos_token_id = ids["<|im_end|>"]
        config.pad_token_id = ids["<|endoftext|>"]
    else:
        text, vision = _llava_parts(arch, size, ids, vocab)
        kwargs: dict[str, Any] = dict(
            text_config=text,
            vision_config=vision,
            image_token_index=ids["<image>"],
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
            tie_word_embeddings=False,
        )
        if arch == "llava":
            config = transformers.LlavaConfig(**kwargs)
        else:
            config = transformers.LlavaNextConfig(
                image_grid_pinpoints=_llava_pinpoints(size), **kwargs
            )
        config.bos_token_id = ids["<s>"]
        config.eos_token_id = ids["</s>"]
        config.pad_token_id = ids["<pad>"]
    config.dtype = _DTYPE
    return config


def _model_class(arch: str) -> Any:
    import transformers

    return {
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
        "llava": transformers.LlavaForConditionalGeneration,
        "llava_next": transformers.LlavaNextForConditionalGeneration,
    }[arch]


# ---------------------------------------------------------------------------------------------
# Processors
# ---------------------------------------------------------------------------------------------


def _build_processor(arch: str, size: str, tokenizer: Any, config: Any) -> Any:
    import transformers

    tiny = size == "tiny"
    if arch in ("qwen2_vl", "qwen2_5_vl"):
        if tiny:
            img = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
            vid = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
        else:
            img = {"shortest_edge": _QWEN2_MIN_PIXELS, "longest_edge": _QWEN2_MAX_PIXELS}
            vid = {
                "shortest_edge": _QWEN2_VIDEO_MIN_PIXELS,
                "longest_edge": _QWEN2_VIDEO_MAX_PIXELS,
            }
        common = dict(
            patch_size=14,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=_OPENAI_CLIP_MEAN,
            image_std=_OPENAI_CLIP_STD,
        )
        image_processor = transformers.Qwen2VLImageProcessor(size=img, **common)
        # Pin today's (uncapped) per-frame sizing, the one vLLM 0.32's placeholder count
        # assumes; leaving it unset logs a deprecation warning on every process start.
        video_processor = transformers.Qwen2VLVideoProcessor(
            size=vid, cap_pixels_per_frame=False, **common
        )
        cls = (
            transformers.Qwen2VLProcessor
            if arch == "qwen2_vl"
            else transformers.Qwen2_5_VLProcessor
        )
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=_QWEN_CHAT_TEMPLATE,
        )
    if arch == "qwen3_vl":
        if tiny:
            img = {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}
            # Qwen3-VL's video limits bound frames x height x width of the whole clip: 4
            # frames of 128 px (2 temporal patches x 4 x 4 = 32 tokens) fit.
            vid = {"shortest_edge": 2 * 64 * 64, "longest_edge": 4 * 128 * 128}
        else:
            img = {"shortest_edge": 65536, "longest_edge": 16777216}
            vid = {"shortest_edge": 131072, "longest_edge": 786432}
        common = dict(
            patch_size=16,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        image_processor = transformers.Qwen2VLImageProcessor(size=img, **common)
        video_processor = transformers.Qwen3VLVideoProcessor(size=vid, fps=2, **common)
        return transformers.Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=_QWEN_CHAT_TEMPLATE,
        )
    vision = config.vision_config
    edge = vision.image_size
    if arch == "llava":
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": edge},
            crop_size={"height": edge, "width": edge},
            do_center_crop=True,
            image_mean=_OPENAI_CLIP_MEAN,
            image_std=_OPENAI_CLIP_STD,
        )
        cls, template = transformers.LlavaProcessor, _LLAVA_CHAT_TEMPLATE
    else:
        image_processor = transformers.LlavaNextImageProcessor(
            size={"shortest_edge": edge},
            crop_size={"height": edge, "width": edge},
            image_grid_pinpoints=_llava_pinpoints(size),
            image_mean=_OPENAI_CLIP_MEAN,
            image_std=_OPENAI_CLIP_STD,
        )
        cls, template = transformers.LlavaNextProcessor, _LLAVA_NEXT_CHAT_TEMPLATE
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token="<image>",
        # The CLS token the tower adds; "default" strategy drops it again.
        num_additional_image_tokens=1,
    )


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _rename_llava_keys(path: Path) -> None:
    """transformers 5 saves CLIP as ``model.vision_tower.embeddings...``; vLLM wants
    ``...vision_tower.vision_model.embeddings...`` (the layout of published LLaVA checkpoints)."""
    from safetensors.torch import load_file, save_file

    for shard in sorted(path.glob("*.safetensors")):
        tensors = load_file(str(shard))
        renamed = {}
        for key, value in tensors.items():
            head, sep, tail = key.partition("vision_tower.")
            if sep and not tail.startswith("vision_model."):
                key = f"{head}vision_tower.vision_model.{tail}"
            renamed[key] = value
        save_file(renamed, str(shard), metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {
            (
                k.replace("vision_tower.", "vision_tower.vision_model.", 1)
                if "vision_tower." in k and "vision_tower.vision_model." not in k
                else k
            ): v
            for k, v in data["weight_map"].items()
        }
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_model(arch: str, config: Any, out: Path) -> None:
    import torch

    cls = _model_class(arch)
    torch.manual_seed(_SEED)
    # Build directly in bf16 (halves the memory of ``mid``); the seeded init is identical
    # on every run on the same torch build.
    model = cls._from_config(config, dtype=torch.bfloat16)
    model.eval()
    model.save_pretrained(out, max_shard_size="20GB")
    if arch in ("llava", "llava_next"):
        _rename_llava_keys(out)
    del model


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _validate(arch: str, size: str) -> None:
    if arch not in DEMO_ARCHS:
        raise ValueError(f"unknown demo arch {arch!r}; allowed: {', '.join(DEMO_ARCHS)}")
    if size not in DEMO_SIZES:
        raise ValueError(f"unknown demo size {size!r}; allowed: {', '.join(DEMO_SIZES)}")


def _write_checkpoint(arch: str, size: str, out: Path) -> None:
    family = "qwen" if arch.startswith("qwen") else "llava"
    tokenizer = _hf_tokenizer(family)
    config = _build_config(arch, size, tokenizer)
    _write_model(arch, config, out)
    processor = _build_processor(arch, size, tokenizer, config)
    processor.save_pretrained(out)
    # A record of what this is, for humans and for the cache (never read by vLLM).
    info = {
        "builder": "mipruner_vllm.demo_model",
        "builder_version": BUILDER_VERSION,
        "arch": arch,
        "size": size,
        "seed": _SEED,
        "random_weights": True,
    }
    (out / "mipruner_demo.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    # save_pretrained and mkdtemp create some entries owner-only; a cached checkpoint is shared
    # (e.g. with a container user), so make everything world-readable.
    out.chmod(0o755)
    for item in out.iterdir():
        item.chmod(0o644)


def build_demo_model(arch: str, out: str | os.PathLike[str], size: str = "tiny") -> Path:
    """Write the ``(arch, size)`` demo checkpoint into ``out`` and return its path.

    ``out`` is created if missing; existing files of the same names are overwritten. Raises
    ``ValueError`` for an unknown ``arch`` (one of :data:`DEMO_ARCHS`) or ``size`` (one of
    :data:`DEMO_SIZES`).
    """
    _validate(arch, size)
    path = Path(out).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    _write_checkpoint(arch, size, path)
    return path


def demo_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds cached demo checkpoints: ``cache_dir``, else ``$MIPRUNER_CACHE_DIR``,
    else ``~/.cache/mipruner-vllm/demo-models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MIPRUNER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mipruner-vllm" / "demo-models"


def ensure_demo_model(
    arch: str, size: str = "tiny", cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return the cached ``(arch, size)`` checkpoint, building it on first use.

    The checkpoint lives in ``<root>/<arch>-<size>-v<BUILDER_VERSION>`` (root from
    :func:`demo_cache_root`). It is built in a sibling temporary directory and renamed into
    place in one step, so concurrent builders (parallel tests, several servers) never see a
    half-written checkpoint; when two race, the loser discards its copy and uses the winner's.
    """
    _validate(arch, size)
    root = demo_cache_root(cache_dir)
    final = root / f"{arch}-{size}-v{BUILDER_VERSION}"
    if (final / "mipruner_demo.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        _write_checkpoint(arch, size, tmp)
        try:
            os.rename(tmp, final)  # atomic on POSIX; fails if another builder got there first
        except OSError:
            if not (final / "mipruner_demo.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def checkpoint_digest(path: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint directory, keyed by relative path (for tests)."""
    root = Path(path)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
