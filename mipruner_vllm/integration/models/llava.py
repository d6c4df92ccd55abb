# SPDX-License-Identifier: Apache-2.0
"""MI-Pruner for LLaVA-1.5: one image = one item of ``(image_size / patch)^2`` visual tokens.

LLaVA uses 1-D RoPE, so kept tokens simply take consecutive positions in the shortened prompt
(no position bookkeeping, no worker class). Stock vLLM registers LLaVA's processor through a
factory that also serves Pixtral-HF; the plugin registers the plain LLaVA classes for its own
architecture name.
"""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from mipruner_vllm.integration.models.common import BatchLayout, EncodedItem, MIPrunerModelMixin
from mipruner_vllm.integration.processing import MIPrunerInfoMixin, MIPrunerProcessorMixin


class LlavaProcessorMixin(MIPrunerProcessorMixin):
    """LLaVA placeholders: ``<image>`` (``image_token_index``)."""

    mipruner_modalities = ("image",)

    def _mipruner_media_tokens(self) -> dict[int, str]:
        return {int(self.info.get_hf_config().image_token_index): "image"}  # type: ignore[attr-defined]

    def _mipruner_placeholder_id(self, modality: str) -> int:
        return int(self.info.get_hf_config().image_token_index)  # type: ignore[attr-defined]


class LlavaModelMixin(MIPrunerModelMixin):
    mipruner_modalities = ("image",)

    def _mipruner_tiles(self, pixels: Any) -> int:
        """Vision-tower tiles of one item's pixels (LLaVA-1.5: one)."""
        return 1

    def _mipruner_layout(self, kwargs: dict[str, Any]) -> BatchLayout | None:
        # Items are stacked or listed along dim 0; the cost of an item is the tower's output
        # tokens for it (one tile of (image_size / patch)^2 for LLaVA-1.5).
        pixels = kwargs.get("pixel_values")
        if pixels is None or kwargs.get("image_embeds") is not None:
            return None
        vision = self.config.vision_config  # type: ignore[attr-defined]
        per_tile = (vision.image_size // vision.patch_size) ** 2
        return BatchLayout("image", [per_tile * self._mipruner_tiles(p) for p in pixels])

    def _mipruner_encode(self, **kwargs: object) -> list[EncodedItem]:
        image_input = self._parse_and_validate_image_input(**kwargs)  # type: ignore[attr-defined]
        if image_input is None:
            return []
        embeds = self._process_image_input(image_input)  # type: ignore[attr-defined]
        return [EncodedItem("image", emb, emb.shape[-1]) for emb in embeds]


class MIPrunerLlavaProcessingInfo(MIPrunerInfoMixin, LlavaProcessingInfo):
    pass


class MIPrunerLlavaMultiModalProcessor(LlavaProcessorMixin, LlavaMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerLlavaMultiModalProcessor,
    info=MIPrunerLlavaProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class MIPrunerLlavaForConditionalGeneration(LlavaModelMixin, LlavaForConditionalGeneration):
    pass


__all__ = ["LlavaModelMixin", "LlavaProcessorMixin", "MIPrunerLlavaForConditionalGeneration"]
