# SPDX-License-Identifier: Apache-2.0
"""MI-Pruner for Qwen2-VL, and the Qwen-family glue Qwen2.5-VL reuses.

Items: each image, and each whole video (all its frames form one item with one budget; the
selection may keep any (t, h, w) tokens of it). Stock vLLM encodes both exactly as before; the
mixins add the selection (:mod:`.common`), placeholder sizing (:mod:`..processing`) and the
M-RoPE position handling (:mod:`..mrope`): ``get_mrope_input_positions`` and
``recompute_mrope_positions`` are replaced, and the model declares
``SupportsMultiModalPruning`` so the runner calls the latter (Qwen2-VL upstream does not).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from vllm.model_executor.models.interfaces import SupportsMultiModalPruning
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from mipruner_vllm.integration.launch import check_armed, disable_stock_video_pruning
from mipruner_vllm.integration.models.common import BatchLayout, EncodedItem, MIPrunerModelMixin
from mipruner_vllm.integration.mrope import (
    grid_positions,
    pruned_mrope_input_positions,
    recompute_media_positions,
)
from mipruner_vllm.integration.processing import MIPrunerInfoMixin, MIPrunerProcessorMixin


class QwenProcessorMixin(MIPrunerProcessorMixin):
    """Qwen placeholders: ``<|image_pad|>`` / ``<|video_pad|>``; N_V from the item's grid."""

    mipruner_modalities = ("image", "video")

    def _mipruner_media_tokens(self) -> dict[int, str]:
        config = self.info.get_hf_config()  # type: ignore[attr-defined]
        return {int(config.image_token_id): "image", int(config.video_token_id): "video"}

    def _mipruner_placeholder_id(self, modality: str) -> int:
        return int(getattr(self.info.get_hf_config(), f"{modality}_token_id"))  # type: ignore[attr-defined]

    def _mipruner_item_budget(
        self, modality: str, item_idx: int, mm_items: Any, item: Any, n_stock: int
    ) -> tuple[int, int]:
        # From the grid, not from the stock count: with --video-pruning-rate (the GPU arming flag)
        # stock Qwen2.5-VL would already have shrunk a video's count for EVS.
        merge = self.info.get_hf_config().vision_config.spatial_merge_size  # type: ignore[attr-defined]
        grid = item[f"{modality}_grid_thw"].data
        return int(grid.prod()) // (merge * merge), 0

    def _mipruner_item_grid(
        self, modality: str, item: Any, n_visual: int
    ) -> tuple[int, int, int] | None:
        # The patch grid over the spatial merge: the LLM tokens, row-major per temporal patch.
        merge = self.info.get_hf_config().vision_config.spatial_merge_size  # type: ignore[attr-defined]
        t, h, w = (int(x) for x in item[f"{modality}_grid_thw"].data.reshape(-1).tolist())
        return t, h // merge, w // merge


class QwenModelMixin(MIPrunerModelMixin):
    """Selection, position columns and the pruned M-RoPE bookkeeping for Qwen2/2.5-VL."""

    mipruner_modalities = ("image", "video")

    def __init__(self, *, vllm_config: Any, prefix: str | None = None) -> None:
        # MIPrunerModelMixin.__init__ passes an unset prefix on as the stock default.
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.mipruner_positions_armed = check_armed(vllm_config, type(self).__name__)
        disable_stock_video_pruning(self)

    def _mipruner_layout(self, kwargs: dict[str, Any]) -> BatchLayout | None:
        # Pixels of all items are concatenated along dim 0 (``t*h*w`` patch rows per item); an
        # item's unpruned embedding count is its patch count over the merge area.
        merge = self.config.vision_config.spatial_merge_size  # type: ignore[attr-defined]
        present = [
            (modality, pixels, grid)
            for modality, pixels, grid in (
                ("image", "pixel_values", "image_grid_thw"),
                ("video", "pixel_values_videos", "video_grid_thw"),
            )
            if kwargs.get(pixels) is not None and kwargs.get(grid) is not None
        ]
        if len(present) != 1 or any(
            kwargs.get(k) is not None for k in ("image_embeds", "video_embeds")
        ):
            return None
        modality, _, grid_key = present[0]
        grid = kwargs[grid_key]
        grid = torch.stack(list(grid)) if isinstance(grid, (list, tuple)) else grid
        rows = [int(r) for r in grid.reshape(-1, 3).prod(-1).tolist()]
        return BatchLayout(modality, [r // (merge * merge) for r in rows], rows)

    def _mipruner_encode(self, **kwargs: object) -> list[EncodedItem]:
        inputs = self._parse_and_validate_multimodal_inputs(**kwargs)  # type: ignore[attr-defined]
        vision = self.config.vision_config  # type: ignore[attr-defined]
        merge = vision.spatial_merge_size
        tokens_per_second = getattr(vision, "tokens_per_second", 1.0)
        items: list[EncodedItem] = []
        for key, value in inputs.items():
            if value is None:
                continue
            if key.startswith("image"):
                modality = "image"
                embeds = self._process_image_input(value)  # type: ignore[attr-defined]
                grids = value["image_grid_thw"].tolist()
                factors = [1.0] * len(grids)
            else:
                modality = "video"
                embeds = self._process_video_input(value)  # type: ignore[attr-defined]
                grids = value["video_grid_thw"].tolist()
                seconds = value.get("second_per_grid_ts")
                # Same t_factor as the model's iter_mm_grid_thw (second_per_grid_ts x tokens/s).
                factors = (
                    [float(s) * tokens_per_second for s in seconds.reshape(-1).tolist()]
                    if seconds is not None
                    else [1.0 * tokens_per_second] * len(grids)
                )
            for emb, (t, h, w), factor in zip(embeds, grids, factors, strict=True):
                positions = grid_positions(t, h // merge, w // merge, factor)
                items.append(EncodedItem(modality, emb, emb.shape[1], positions))
        return items

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> Any:
        lengths = [
            f.mm_position.length for f in sorted(mm_features, key=lambda f: f.mm_position.offset)
        ]
        return pruned_mrope_input_positions(
            self.iter_mm_grid_thw(mm_features), lengths, len(input_tokens)
        )  # type: ignore[attr-defined]

    def recompute_mrope_positions(
        self,
        input_ids: Any,
        multimodal_embeddings: Any,
        mrope_positions: Any,
        num_computed_tokens: int,
    ) -> Any:
        return recompute_media_positions(
            input_ids,
            multimodal_embeddings,
            mrope_positions,
            num_computed_tokens,
            (self.config.image_token_id, self.config.video_token_id),  # type: ignore[attr-defined]
        )

    def get_encoder_cudagraph_config(self) -> Any:
        # Encoder CUDA graphs bypass embed_multimodal, and so the selection.
        return dataclasses.replace(super().get_encoder_cudagraph_config(), modalities=[])  # type: ignore[misc]


class MIPrunerQwen2VLProcessingInfo(MIPrunerInfoMixin, Qwen2VLProcessingInfo):
    pass


class MIPrunerQwen2VLMultiModalProcessor(QwenProcessorMixin, Qwen2VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerQwen2VLMultiModalProcessor,
    info=MIPrunerQwen2VLProcessingInfo,
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class MIPrunerQwen2VLForConditionalGeneration(
    QwenModelMixin, Qwen2VLForConditionalGeneration, SupportsMultiModalPruning
):
    pass
