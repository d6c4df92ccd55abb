# SPDX-License-Identifier: Apache-2.0
"""Turn a family record (:mod:`.families`) into transformers objects, and post-save fixes.

A family names one config builder and one processor builder from here; the numbers come from
its size record. Everything is imported lazily (transformers, torch), so listing the families
costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mipruner_vllm.demo_model.families import DemoFamily, DemoSize

__all__ = [
    "DTYPE",
    "SEED",
    "llava_config",
    "llava_next_processor",
    "llava_processor",
    "qwen_config",
    "qwen_processor",
    "rename_llava_vision_keys",
    "write_weights",
]

SEED = 1234
DTYPE = "bfloat16"


def _token_ids(family: DemoFamily, tokenizer: Any) -> dict[str, int]:
    """``bos``/``eos``/``pad`` ids as the family's configs carry them."""
    tokens = family.tokens
    roles = {"bos": tokens.config_bos, "eos": tokens.eos, "pad": tokens.pad}
    return {role: int(tokenizer.convert_tokens_to_ids(tok)) for role, tok in roles.items()}


def _text_config(family: DemoFamily, size: DemoSize, tokenizer: Any) -> dict[str, Any]:
    ids = _token_ids(family, tokenizer)
    text = dict(size.text)
    text["vocab_size"] = len(tokenizer)
    for role in family.text_token_ids:
        text[f"{role}_token_id"] = ids[role]
    text["dtype"] = DTYPE
    return text


def _finish(config: Any, family: DemoFamily, tokenizer: Any) -> Any:
    # vLLM and generation read these from the top level as well as from text_config.
    for role, value in _token_ids(family, tokenizer).items():
        setattr(config, f"{role}_token_id", value)
    config.dtype = DTYPE
    return config


def qwen_config(family: DemoFamily, size: DemoSize, tokenizer: Any) -> Any:
    """A Qwen-VL family config (Qwen2-VL ... Qwen3.5): text + vision + the media token ids."""
    import transformers

    def token(name: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(name))

    config = getattr(transformers, family.config_class)(
        text_config=_text_config(family, size, tokenizer),
        vision_config=dict(size.vision),
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=False,
        **size.config,
    )
    return _finish(config, family, tokenizer)


def llava_config(family: DemoFamily, size: DemoSize, tokenizer: Any) -> Any:
    """A LLaVA-1.5 / LLaVA-NeXT config: a Llama LLM and a CLIP tower."""
    import transformers

    vision = dict(size.vision)
    config = getattr(transformers, family.config_class)(
        text_config=_text_config(family, size, tokenizer),
        vision_config=vision,
        image_token_index=int(tokenizer.convert_tokens_to_ids("<image>")),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
        tie_word_embeddings=False,
        **size.config,
    )
    return _finish(config, family, tokenizer)


def qwen_processor(family: DemoFamily, size: DemoSize, tokenizer: Any, config: Any) -> Any:
    """Qwen image processor + the family's video processor + tokenizer + chat template."""
    import transformers

    data = size.processor
    common = dict(
        patch_size=data["patch_size"],
        temporal_patch_size=2,
        merge_size=2,
        image_mean=list(data["image_mean"]),
        image_std=list(data["image_std"]),
    )
    image_processor = transformers.Qwen2VLImageProcessor(size=dict(data["image_size"]), **common)
    video_processor = getattr(transformers, data["video_processor_class"])(
        size=dict(data["video_size"]), **data["video_kwargs"], **common
    )
    return getattr(transformers, family.processor_class)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=family.chat_template,
    )


def _llava_like(family: DemoFamily, tokenizer: Any, config: Any, image_processor: Any) -> Any:
    import transformers

    return getattr(transformers, family.processor_class)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=family.chat_template,
        image_token="<image>",
        # The CLS token the tower adds; the "default" strategy drops it again.
        num_additional_image_tokens=1,
    )


def llava_processor(family: DemoFamily, size: DemoSize, tokenizer: Any, config: Any) -> Any:
    """LLaVA-1.5: resize the short side, centre-crop a square."""
    import transformers

    edge = config.vision_config.image_size
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": edge},
        crop_size={"height": edge, "width": edge},
        do_center_crop=True,
        image_mean=list(size.processor["image_mean"]),
        image_std=list(size.processor["image_std"]),
    )
    return _llava_like(family, tokenizer, config, image_processor)


def llava_next_processor(family: DemoFamily, size: DemoSize, tokenizer: Any, config: Any) -> Any:
    """LLaVA-NeXT: a base tile plus anyres tiles on the config's grid pinpoints."""
    import transformers

    edge = config.vision_config.image_size
    image_processor = transformers.LlavaNextImageProcessor(
        size={"shortest_edge": edge},
        crop_size={"height": edge, "width": edge},
        image_grid_pinpoints=[list(p) for p in size.config["image_grid_pinpoints"]],
        image_mean=list(size.processor["image_mean"]),
        image_std=list(size.processor["image_std"]),
    )
    return _llava_like(family, tokenizer, config, image_processor)


def write_weights(family: DemoFamily, config: Any, out: Path) -> None:
    """Seeded random weights of the family's transformers model class, saved in bf16."""
    import torch
    import transformers

    cls = getattr(transformers, family.model_class)
    torch.manual_seed(SEED)
    # Build directly in bf16 (halves the memory of ``mid``); the seeded init is identical on
    # every run on the same torch build.
    model = cls._from_config(config, dtype=torch.bfloat16)
    model.eval()
    model.save_pretrained(out, max_shard_size="20GB")
    del model


def rename_llava_vision_keys(path: Path) -> None:
    """transformers 5 saves CLIP as ``model.vision_tower.embeddings...``; vLLM wants
    ``...vision_tower.vision_model.embeddings...`` (the layout of published LLaVA checkpoints)."""
    from safetensors.torch import load_file, save_file

    def renamed(key: str) -> str:
        head, sep, tail = key.partition("vision_tower.")
        if sep and not tail.startswith("vision_model."):
            return f"{head}vision_tower.vision_model.{tail}"
        return key

    for shard in sorted(path.glob("*.safetensors")):
        tensors = load_file(str(shard))
        tensors = {renamed(k): v for k, v in tensors.items()}
        save_file(tensors, str(shard), metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
