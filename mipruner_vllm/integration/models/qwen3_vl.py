# SPDX-License-Identifier: Apache-2.0
"""MI-Pruner for Qwen3-VL: images pruned (deepstack rows follow), videos passed through.

* Deepstack: Qwen3-VL's image embeddings are ``[main | deepstack level 1 | ... ]`` along the
  hidden dimension (``visual_dim`` each). Scores use the main ``visual_dim`` columns (what the
  LLM's input sees); the *rows* are selected on the full tensor, so each deepstack level keeps
  exactly the same tokens, in the same order, as the main embedding.
* Positions: as for Qwen2/2.5-VL (:mod:`..mrope`). ``get_mrope_input_positions`` advances by the
  placeholder length of an image (stock Qwen3-VL advances by ``h*w``, memo B3); every video frame
  is its own run of media tokens after its timestamp text.
* Video: a Qwen3-VL video interleaves per-frame timestamp text with the frames' tokens. Pruning it
  as one item is not implemented yet, so videos keep every token (they still carry position
  columns, which the runner strips). With the GPU arming flag ``--video-pruning-rate``, stock
  Qwen3-VL would run EVS on videos; the plugin's processor and model turn that off, so video
  behaves exactly as stock vLLM without video pruning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing.processor import PromptReplacement

from mipruner_vllm.integration.fields import strip_pruning_kwargs
from mipruner_vllm.integration.models.common import EncodedItem
from mipruner_vllm.integration.models.qwen2_vl import QwenModelMixin, QwenProcessorMixin
from mipruner_vllm.integration.mrope import grid_positions, pruned_mrope_input_positions
from mipruner_vllm.integration.processing import MIPrunerInfoMixin


class MIPrunerQwen3VLProcessingInfo(MIPrunerInfoMixin, Qwen3VLProcessingInfo):
    pass


class MIPrunerQwen3VLMultiModalProcessor(QwenProcessorMixin, Qwen3VLMultiModalProcessor):
    mipruner_modalities = ("image",)

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: Any) -> Any:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        hf_config = self.info.get_hf_config()
        merge = self.info.get_image_processor(**strip_pruning_kwargs(hf_processor_mm_kwargs)).merge_size
        tokenizer = self.info.get_tokenizer()

        def video_replacement(item_idx: int) -> Any:
            # Stock Qwen3-VL's replacement without its EVS branch (the arming rate must not prune).
            item = out_mm_kwargs["video"][item_idx]
            t, h, w = (int(x) for x in item["video_grid_thw"].data.tolist())
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=[h * w // (merge * merge)] * t,
                timestamps=item["timestamps"].data,
                tokenizer=tokenizer,
                vision_start_token_id=hf_config.vision_start_token_id,
                vision_end_token_id=hf_config.vision_end_token_id,
                video_token_id=hf_config.video_token_id,
                select_token_id=True,
            )

        return [
            PromptReplacement(modality="video", target=u.target, replacement=video_replacement)
            if u.modality == "video"
            else u
            for u in updates
        ]


@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerQwen3VLMultiModalProcessor,
    info=MIPrunerQwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class MIPrunerQwen3VLForConditionalGeneration(QwenModelMixin, Qwen3VLForConditionalGeneration):
    mipruner_modalities = ("image",)

    def _mipruner_encode(self, **kwargs: object) -> list[EncodedItem]:
        inputs = self._parse_and_validate_multimodal_inputs(**kwargs)
        merge = self.config.vision_config.spatial_merge_size
        items: list[EncodedItem] = []
        for key, value in inputs.items():
            if value is None:
                continue
            if key.startswith("image"):
                embeds = self._process_image_input(value)
                for emb, (t, h, w) in zip(embeds, value["image_grid_thw"].tolist(), strict=True):
                    items.append(EncodedItem("image", emb, self.visual_dim, grid_positions(t, h // merge, w // merge)))
            else:
                embeds = self._process_video_input(value)
                for emb, (t, h, w) in zip(embeds, value["video_grid_thw"].tolist(), strict=True):
                    # Each frame is its own run after its timestamp text: (0, h, w) per frame.
                    positions = grid_positions(t, h // merge, w // merge)
                    positions[:, 0] = 0
                    items.append(EncodedItem("video", emb, self.visual_dim, positions))
        return items

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> Any:
        config = self.config
        grids: list[tuple[int, int, int, int, float]] = []
        lengths: list[int] = []
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            for offset, h, w, n in Qwen3VLForConditionalGeneration._iter_mm_grid_hw(
                input_tokens,
                [feature],
                video_token_id=config.video_token_id,
                vision_start_token_id=config.vision_start_token_id,
                vision_end_token_id=config.vision_end_token_id,
                spatial_merge_size=config.vision_config.spatial_merge_size,
            ):
                grids.append((offset, 1, h, w, 1.0))
                lengths.append(feature.mm_position.length if feature.modality == "image" else n)
        return pruned_mrope_input_positions(iter(grids), lengths, len(input_tokens))


__all__: Sequence[str] = ["MIPrunerQwen3VLForConditionalGeneration"]
