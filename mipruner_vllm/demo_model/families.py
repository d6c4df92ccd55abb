# SPDX-License-Identifier: Apache-2.0
"""The demo checkpoint families as data: one record per architecture, sizes as numbers.

One :class:`DemoFamily` per record of the family registry (:data:`mipruner_vllm.families.FAMILIES`,
same keys, a unit test holds them equal): its transformers classes, token set and chat template,
the config and processor builders (:mod:`.builders`) it uses, any post-save fix, and a ``tiny``
and a ``mid`` :class:`DemoSize`. Each kind of family has a factory (:func:`_qwen_family`,
:func:`_qwen3_5_family`, :func:`_llava_family`), so a record is its numbers.

* ``tiny`` (tests): LLM hidden 128, 4 heads of head_dim 32 (the smallest head size vLLM's CPU
  attention accepts), 2 layers, a 2-layer vision tower of width 64, and processor pixel limits
  so that an image is 4..16 visual tokens (Qwen2/2.5-VL: 56..112 px; Qwen3-VL and Qwen3.5 with
  their 16-px patches: 64..128 px; LLaVA-1.5: 56 px -> 16 tokens; LLaVA-NeXT: 28 px tiles, a
  56 px image -> 24 tokens). A 4-frame Qwen video of 112 px (Qwen3-VL, Qwen3.5: 128 px) is 32
  tokens.
* ``mid`` (benchmarks): the real vision towers and processor pixel limits (an 896x896 image is
  1,024 visual tokens on Qwen2-VL / Qwen2.5-VL, 784 on Qwen3-VL and Qwen3.5; LLaVA 336 px ->
  576) and an 8-layer LLM of hidden 1,536.

Qwen3.5 (``qwen3_5``, ``qwen3_5_moe``): the LLM is a hybrid of Gated DeltaNet linear attention
and gated full attention (``layer_types``). vLLM's CPU Gated DeltaNet kernels exist only for
linear head dims 64 and 128, so both sizes use those. The tiny size has one linear key and value
head and 4 KV heads, which keeps vLLM's hybrid cache block (raised to fit one recurrent state
page) at 64 tokens; the MoE variant adds 4 experts (2 per token) and a shared expert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mipruner_vllm.demo_model import builders
from mipruner_vllm.demo_model.templates import (
    LLAVA_CHAT_TEMPLATE,
    LLAVA_NEXT_CHAT_TEMPLATE,
    QWEN_CHAT_TEMPLATE,
)
from mipruner_vllm.demo_model.tokenizer import LLAVA_TOKENS, QWEN_TOKENS, TokenSet

__all__ = ["DemoFamily", "DemoSize", "FAMILIES"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """The numbers of one size of one family."""

    #: ``text_config`` fields (vocab size, token ids and dtype are filled in by the builder).
    text: Mapping[str, Any]
    #: ``vision_config`` fields.
    vision: Mapping[str, Any]
    #: What the family's processor builder reads (pixel limits, normalisation, ...).
    processor: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Extra top-level config fields.
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DemoFamily:
    """How to build one architecture's demo checkpoint."""

    arch: str
    #: transformers class names.
    config_class: str
    model_class: str
    processor_class: str
    tokens: TokenSet
    chat_template: str
    #: ``(family, size, tokenizer) -> config``.
    make_config: Callable[..., Any]
    #: ``(family, size, tokenizer, config) -> processor``.
    make_processor: Callable[..., Any]
    sizes: Mapping[str, DemoSize]
    #: Which of ``bos``/``eos``/``pad`` the text config carries (the top level has all three).
    text_token_ids: tuple[str, ...] = ("bos", "eos", "pad")
    #: Applied to the saved weights, in order, before the processor is saved.
    post_save: tuple[Callable[[Path], None], ...] = ()


# --- shared numbers --------------------------------------------------------------------------

_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)

_TINY_LLM = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
_MID_LLM = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=8,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
)


def _qwen2_text(llm: dict[str, Any], mrope_section: list[int]) -> dict[str, Any]:
    # head_dim = hidden / heads; the M-RoPE sections sum to head_dim / 2.
    return dict(
        llm,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=llm["num_hidden_layers"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": mrope_section,
        },
        rms_norm_eps=1e-6,
    )


def _qwen3_text(llm: dict[str, Any], mrope_section: list[int]) -> dict[str, Any]:
    return dict(
        llm,
        head_dim=llm["hidden_size"] // llm["num_attention_heads"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": mrope_section,
            "mrope_interleaved": True,
        },
        rms_norm_eps=1e-6,
    )


def _qwen2_processor(image: tuple[int, int], video: tuple[int, int]) -> dict[str, Any]:
    return dict(
        patch_size=14,
        image_mean=_OPENAI_CLIP_MEAN,
        image_std=_OPENAI_CLIP_STD,
        image_size={"shortest_edge": image[0], "longest_edge": image[1]},
        video_size={"shortest_edge": video[0], "longest_edge": video[1]},
        video_processor_class="Qwen2VLVideoProcessor",
        # Pin today's (uncapped) per-frame sizing, the one vLLM 0.32's placeholder count
        # assumes; leaving it unset logs a deprecation warning on every process start.
        video_kwargs={"cap_pixels_per_frame": False},
    )


def _qwen3_processor(image: tuple[int, int], video: tuple[int, int]) -> dict[str, Any]:
    # Qwen3-VL's video limits bound frames x height x width of the whole clip.
    return dict(
        patch_size=16,
        image_mean=_HALF,
        image_std=_HALF,
        image_size={"shortest_edge": image[0], "longest_edge": image[1]},
        video_size={"shortest_edge": video[0], "longest_edge": video[1]},
        video_processor_class="Qwen3VLVideoProcessor",
        video_kwargs={"fps": 2},
    )


# Pixel limits. Tiny Qwen2: 56..112 px per image and frame. Mid: the published checkpoints'.
_QWEN2_TINY_PIXELS = dict(image=(56 * 56, 112 * 112), video=(56 * 56, 112 * 112))
_QWEN2_MID_PIXELS = dict(image=(56 * 56, 28 * 28 * 16384), video=(128 * 28 * 28, 768 * 28 * 28))
# Tiny Qwen3: 64..128 px per image; a clip of 4 frames of 128 px (2 temporal patches x 4 x 4).
_QWEN3_TINY_PIXELS = dict(image=(64 * 64, 128 * 128), video=(2 * 64 * 64, 4 * 128 * 128))
_QWEN3_MID_PIXELS = dict(image=(65536, 16777216), video=(131072, 786432))

_QWEN2_5_TINY_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    out_hidden_size=128,
    window_size=56,  # one 2x2 merged unit per window row
    fullatt_block_indexes=[1],
    tokens_per_second=2,
)
_QWEN2_5_MID_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=1536,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
# Qwen3-VL and Qwen3.5 share the tower; Qwen3-VL adds deepstack taps of intermediate layers.
_QWEN3_TINY_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=2,
    out_hidden_size=128,
    num_position_embeddings=64,  # an 8x8 learned grid, interpolated per image
)
_QWEN3_MID_VISION = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    out_hidden_size=1536,
    num_position_embeddings=2304,
)


def _qwen3_5_text(size: str, moe: bool) -> dict[str, Any]:
    """Qwen3.5's hybrid LLM: 3 Gated DeltaNet layers per full-attention layer in ``mid``."""
    if size == "tiny":
        text: dict[str, Any] = dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            layer_types=["linear_attention", "full_attention"],
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=32,
            linear_num_key_heads=1,
            linear_num_value_heads=1,
            linear_key_head_dim=64,
            linear_value_head_dim=64,
            max_position_embeddings=4096,
            # partial_rotary_factor 0.25 of head_dim 32: 8 rotary dims, sections sum to 4.
            mrope_section=[2, 1, 1],
        )
        moe_fields = dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=64,
        )
    else:
        text = dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=8,
            layer_types=["linear_attention"] * 3
            + ["full_attention"]
            + ["linear_attention"] * 3
            + ["full_attention"],
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=256,
            linear_num_key_heads=8,
            linear_num_value_heads=16,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            max_position_embeddings=32768,
            # 0.25 x 256 = 64 rotary dims: the published split.
            mrope_section=[11, 11, 10],
        )
        moe_fields = dict(
            num_experts=16,
            num_experts_per_tok=4,
            moe_intermediate_size=512,
            shared_expert_intermediate_size=512,
        )
    section = text.pop("mrope_section")
    text.update(
        linear_conv_kernel_dim=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "mrope_section": section,
            "mrope_interleaved": True,
            "partial_rotary_factor": 0.25,
        },
        rms_norm_eps=1e-6,
    )
    if moe:
        text.pop("intermediate_size")
        text.update(moe_fields)
    return text


def _qwen_family(
    arch: str,
    prefix: str,
    tiny: DemoSize,
    mid: DemoSize,
    processor_class: str | None = None,
    text_token_ids: tuple[str, ...] = ("bos", "eos", "pad"),
) -> DemoFamily:
    """A Qwen family: transformers' ``<prefix>Config`` / ``...ForConditionalGeneration`` /
    ``...Processor``, the Qwen token set, chat template and builders."""
    return DemoFamily(
        arch=arch,
        config_class=f"{prefix}Config",
        model_class=f"{prefix}ForConditionalGeneration",
        processor_class=processor_class or f"{prefix}Processor",
        tokens=QWEN_TOKENS,
        chat_template=QWEN_CHAT_TEMPLATE,
        make_config=builders.qwen_config,
        make_processor=builders.qwen_processor,
        sizes={"tiny": tiny, "mid": mid},
        text_token_ids=text_token_ids,
    )


def _qwen3_5_family(arch: str, moe: bool) -> DemoFamily:
    return _qwen_family(
        arch,
        "Qwen3_5Moe" if moe else "Qwen3_5",
        tiny=DemoSize(
            text=_qwen3_5_text("tiny", moe),
            vision=_QWEN3_TINY_VISION,
            processor=_qwen3_processor(**_QWEN3_TINY_PIXELS),
        ),
        mid=DemoSize(
            text=_qwen3_5_text("mid", moe),
            vision=_QWEN3_MID_VISION,
            processor=_qwen3_processor(**_QWEN3_MID_PIXELS),
        ),
        # Qwen3.5 checkpoints use Qwen3-VL's processor (and so does vLLM's Qwen3.5 model).
        processor_class="Qwen3VLProcessor",
    )


_CLIP = dict(model_type="clip_vision_model", hidden_act="quick_gelu", layer_norm_eps=1e-5)
_LLAMA = dict(
    model_type="llama",
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)
_LLAVA_TINY_TEXT = dict(_TINY_LLM, num_key_value_heads=4, **_LLAMA)
_LLAVA_MID_TEXT = dict(
    _MID_LLM,
    intermediate_size=4096,
    num_key_value_heads=12,
    max_position_embeddings=4096,
    **_LLAMA,
)
_CLIP_TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=14,
    projection_dim=64,
)
# CLIP ViT-L/14-336, the tower of llava-1.5 and llava-v1.6.
_CLIP_MID = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
_CLIP_NORM = dict(image_mean=_OPENAI_CLIP_MEAN, image_std=_OPENAI_CLIP_STD)


def _llava_family(arch: str, next_: bool) -> DemoFamily:
    prefix = "LlavaNext" if next_ else "Llava"
    tiny_edge = 28 if next_ else 56
    pinpoints: dict[str, Any] = {}
    if next_:
        pinpoints = {
            "tiny": {"image_grid_pinpoints": [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]},
            "mid": {
                "image_grid_pinpoints": [
                    [336, 672],
                    [672, 336],
                    [672, 672],
                    [1008, 336],
                    [336, 1008],
                ]
            },
        }
    return DemoFamily(
        arch=arch,
        config_class=f"{prefix}Config",
        model_class=f"{prefix}ForConditionalGeneration",
        processor_class=f"{prefix}Processor",
        tokens=LLAVA_TOKENS,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE if next_ else LLAVA_CHAT_TEMPLATE,
        make_config=builders.llava_config,
        make_processor=builders.llava_next_processor if next_ else builders.llava_processor,
        sizes={
            "tiny": DemoSize(
                text=_LLAVA_TINY_TEXT,
                vision=dict(_CLIP_TINY, image_size=tiny_edge, **_CLIP),
                processor=_CLIP_NORM,
                config=pinpoints.get("tiny", _EMPTY),
            ),
            "mid": DemoSize(
                text=_LLAVA_MID_TEXT,
                vision=dict(_CLIP_MID, **_CLIP),
                processor=_CLIP_NORM,
                config=pinpoints.get("mid", _EMPTY),
            ),
        },
        post_save=(builders.rename_llava_vision_keys,),
    )


#: Every demo family, by the ``--arch`` name of ``mipruner-vllm demo-model`` (the keys of
#: :data:`mipruner_vllm.families.FAMILIES`).
FAMILIES: Mapping[str, DemoFamily] = MappingProxyType(
    {
        "qwen2_vl": _qwen_family(
            "qwen2_vl",
            "Qwen2VL",
            tiny=DemoSize(
                text=_qwen2_text(_TINY_LLM, [4, 6, 6]),
                vision=dict(depth=2, embed_dim=64, num_heads=2, mlp_ratio=2, hidden_size=128),
                processor=_qwen2_processor(**_QWEN2_TINY_PIXELS),
            ),
            mid=DemoSize(
                text=_qwen2_text(_MID_LLM, [16, 24, 24]),
                vision=dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=1536),
                processor=_qwen2_processor(**_QWEN2_MID_PIXELS),
            ),
        ),
        "qwen2_5_vl": _qwen_family(
            "qwen2_5_vl",
            "Qwen2_5_VL",
            tiny=DemoSize(
                text=_qwen2_text(_TINY_LLM, [4, 6, 6]),
                vision=_QWEN2_5_TINY_VISION,
                processor=_qwen2_processor(**_QWEN2_TINY_PIXELS),
            ),
            mid=DemoSize(
                text=_qwen2_text(_MID_LLM, [16, 24, 24]),
                vision=_QWEN2_5_MID_VISION,
                processor=_qwen2_processor(**_QWEN2_MID_PIXELS),
            ),
        ),
        "qwen3_vl": _qwen_family(
            "qwen3_vl",
            "Qwen3VL",
            tiny=DemoSize(
                text=_qwen3_text(_TINY_LLM, [6, 5, 5]),
                vision=dict(_QWEN3_TINY_VISION, deepstack_visual_indexes=[0, 1]),
                processor=_qwen3_processor(**_QWEN3_TINY_PIXELS),
            ),
            mid=DemoSize(
                text=_qwen3_text(_MID_LLM, [24, 20, 20]),
                vision=dict(_QWEN3_MID_VISION, deepstack_visual_indexes=[8, 16, 24]),
                processor=_qwen3_processor(**_QWEN3_MID_PIXELS),
            ),
            # Qwen3VLTextConfig takes no bos/eos ids; vLLM reads them from the top level.
            text_token_ids=("pad",),
        ),
        "qwen3_5": _qwen3_5_family("qwen3_5", moe=False),
        "qwen3_5_moe": _qwen3_5_family("qwen3_5_moe", moe=True),
        "llava": _llava_family("llava", next_=False),
        "llava_next": _llava_family("llava_next", next_=True),
    }
)
