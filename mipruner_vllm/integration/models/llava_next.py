# SPDX-License-Identifier: Apache-2.0
"""MI-Pruner for LLaVA-NeXT (anyres): the newline rule.

A LLaVA-NeXT image is, in this order: the base tile (``(image_size/patch)^2`` tokens), then the
anyres tiles merged into one unpadded grid of ``H_u`` rows x ``W_u`` columns, each row followed by
one learned ``image_newline`` token (vLLM's ``_merge_image_patch_embeddings``, strategy
``spatial_unpad``). The plugin's rule:

* the ``H_u`` newline tokens are *structural*: they are always kept, never scored, and not counted
  in N_V. N_V is the base tile plus the unpadded grid (base + H_u * W_u), and the budget rule
  (:func:`mipruner_vllm.params.n_keep`) applies to it;
* the item keeps ``n_keep(N_V) + H_u`` placeholders, the kept visual tokens and all newlines in
  their original order, so the LLM still sees where each grid row ends (a row whose tokens were
  all pruned still contributes its newline).

The processor derives ``H_u`` from the image size with the same formula vLLM uses for the stock
token count (:func:`newline_count`); the model finds the newline rows from the same geometry.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageProcessorItems

from mipruner_vllm.integration.models.common import EncodedItem
from mipruner_vllm.integration.models.llava import LlavaModelMixin, LlavaProcessorMixin
from mipruner_vllm.integration.processing import MIPrunerInfoMixin


def newline_count(hf_config: Any, height: int, width: int) -> int:
    """``H_u``: rows of the unpadded anyres grid of an ``height x width`` image.

    Same arithmetic as vLLM's ``LlavaNextProcessingInfo._get_num_unpadded_features`` (0.32),
    which sizes the stock placeholder run.
    """
    vision = hf_config.vision_config
    npatches = vision.image_size // vision.patch_size
    num_patch_height, num_patch_width = get_anyres_image_grid_shape(
        image_size=(height, width),
        grid_pinpoints=hf_config.image_grid_pinpoints,
        patch_size=vision.image_size,
    )
    current_height = npatches * num_patch_height
    current_width = npatches * num_patch_width
    aspect_ratio = width / height
    current_aspect_ratio = current_width / current_height
    if aspect_ratio > current_aspect_ratio:
        new_height = int(round(height * (current_width / width), 7))
        padding = (current_height - new_height) // 2
        current_height = current_height - (2 * padding)
    return int(current_height)


class LlavaNextProcessorMixin(LlavaProcessorMixin):
    def _mipruner_item_budget(
        self, modality: str, item_idx: int, mm_items: Any, item: Any, n_stock: int
    ) -> tuple[int, int]:
        images = mm_items.get_items("image", ImageProcessorItems) if _has_pixels(mm_items) else None
        if images is None:
            return n_stock, 0  # precomputed embeddings: no known layout, all tokens prunable
        size = images.get_image_size(item_idx)
        rows = newline_count(self.info.get_hf_config(), size.height, size.width)  # type: ignore[attr-defined]
        return n_stock - rows, rows

    def _mipruner_item_grid(
        self, modality: str, item: Any, n_visual: int
    ) -> tuple[int, int, int] | None:
        # The base tile and the unpadded anyres tiles form no single grid: indices stay flat.
        return None


def _has_pixels(mm_items: Any) -> bool:
    try:
        return isinstance(mm_items["image"], ImageProcessorItems)
    except KeyError:
        return False


class LlavaNextModelMixin(LlavaModelMixin):
    def _mipruner_tiles(self, pixels: Any) -> int:
        # (tiles, 3, H, W) per image: the base tile plus the anyres tiles, each a full tower pass.
        return int(pixels.shape[0]) if getattr(pixels, "dim", lambda: 0)() == 4 else 1

    def _mipruner_encode(self, **kwargs: object) -> list[EncodedItem]:
        image_input = self._parse_and_validate_image_input(**kwargs)  # type: ignore[attr-defined]
        if image_input is None:
            return []
        embeds = self._process_image_input(image_input)  # type: ignore[attr-defined]
        sizes = image_input.get("image_sizes") if image_input["type"] == "pixel_values" else None
        vision = self.config.vision_config  # type: ignore[attr-defined]
        base = (vision.image_size // vision.patch_size) ** 2
        items = []
        for i, emb in enumerate(embeds):
            fixed = None
            if sizes is not None:
                height, width = (int(x) for x in sizes[i].tolist())
                rows = newline_count(self.config, height, width)  # type: ignore[attr-defined]
                rest = emb.shape[0] - base
                if rows <= 0 or rest % rows:
                    raise RuntimeError(
                        f"mipruner: unexpected LLaVA-NeXT layout "
                        f"({emb.shape[0]} rows, {rows} newlines)"
                    )
                fixed = torch.zeros(emb.shape[0], dtype=torch.bool)
                fixed[base + rest // rows - 1 :: rest // rows] = True
            items.append(EncodedItem("image", emb, emb.shape[-1], fixed=fixed))
        return items


class MIPrunerLlavaNextProcessingInfo(MIPrunerInfoMixin, LlavaNextProcessingInfo):
    pass


class MIPrunerLlavaNextMultiModalProcessor(LlavaNextProcessorMixin, LlavaNextMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerLlavaNextMultiModalProcessor,
    info=MIPrunerLlavaNextProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class MIPrunerLlavaNextForConditionalGeneration(
    LlavaNextModelMixin, LlavaNextForConditionalGeneration
):
    pass
