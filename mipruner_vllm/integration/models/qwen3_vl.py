# SPDX-License-Identifier: Apache-2.0
"""MI-Pruner for Qwen3-VL: images and videos; deepstack rows follow the selection.

* Deepstack: Qwen3-VL's image embeddings are ``[main | deepstack level 1 | ... ]`` along the
  hidden dimension (``visual_dim`` each). Scores use the main ``visual_dim`` columns (what the
  LLM's input sees); the *rows* are selected on the full tensor, so each deepstack level keeps
  exactly the same tokens, in the same order, as the main embedding.
* Positions: as for Qwen2/2.5-VL (:mod:`..mrope`). ``get_mrope_input_positions`` advances by the
  placeholder length of an image (stock Qwen3-VL advances by ``h*w``); every video frame
  is its own run of media tokens after its timestamp text, at positions ``(0, h, w)`` from the
  run's start, and the text after a frame continues as if nothing had been pruned.
* Video budget: stock Qwen3-VL writes ``<t seconds><|vision_start|>`` pads ``<|vision_end|>`` for
  every frame, so each frame's pad count is fixed in the prompt before the encoder runs. The
  plugin keeps that layout: the video is one item whose budget ``n_keep(T*P)`` is spread evenly
  over its T frames (:meth:`~mipruner_vllm.params.PruningParams.n_keep_per_frame`), and each
  frame keeps its share of its own P tokens, scored against the video's query. (Stock EVS
  instead moves every retained token into the first frame's slot and rebuilds the span in the
  model, vLLM #30847.) With the GPU arming flag ``--video-pruning-rate`` stock Qwen3-VL would
  also run EVS; the plugin's processor and model turn that off, so a video is pruned once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from mipruner_vllm.integration.fields import decode_params, detail_token, params_field
from mipruner_vllm.integration.models.common import EncodedItem
from mipruner_vllm.integration.models.qwen2_vl import QwenModelMixin, QwenProcessorMixin
from mipruner_vllm.integration.mrope import grid_positions, pruned_mrope_input_positions
from mipruner_vllm.integration.processing import MIPrunerInfoMixin, PrunedPlaceholder


class MIPrunerQwen3VLProcessingInfo(MIPrunerInfoMixin, Qwen3VLProcessingInfo):
    pass


class MIPrunerQwen3VLMultiModalProcessor(QwenProcessorMixin, Qwen3VLMultiModalProcessor):
    def _pruned_replacement(
        self, modality: str, stock: Any, mm_items: Any, out_mm_kwargs: Any, item_idx: int
    ) -> PrunedPlaceholder:
        if modality != "video":
            return super()._pruned_replacement(modality, stock, mm_items, out_mm_kwargs, item_idx)
        # Stock Qwen3-VL's per-frame layout with each frame's share of the budget; stock's own
        # replacement is not called, so its EVS branch (armed by the GPU flag) never runs.
        item = out_mm_kwargs["video"][item_idx]
        params = decode_params(item[params_field("video")].data)
        hf_config = self.info.get_hf_config()
        merge = hf_config.vision_config.spatial_merge_size
        frames, h, w = (int(x) for x in item["video_grid_thw"].data.tolist())
        per_frame = h * w // (merge * merge)
        budgets = params.n_keep_per_frame(frames, per_frame)
        details = Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=budgets,
            timestamps=item["timestamps"].data,
            tokenizer=self.info.get_tokenizer(),
            vision_start_token_id=hf_config.vision_start_token_id,
            vision_end_token_id=hf_config.vision_end_token_id,
            video_token_id=hf_config.video_token_id,
            select_token_id=True,
        )
        token = detail_token(item[params_field("video")].data)
        n_visual = frames * per_frame
        return PrunedPlaceholder(
            full=details.full,
            is_embed=details.is_embed,
            n_visual=n_visual,
            n_kept=sum(budgets),
            method=params.applied_method,
            detail_token=token,
            grid=self._mipruner_item_grid("video", item, n_visual) if token else None,
            detail_scores=bool(token and params.pruning_detail_scores),
        )


@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerQwen3VLMultiModalProcessor,
    info=MIPrunerQwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class MIPrunerQwen3VLForConditionalGeneration(QwenModelMixin, Qwen3VLForConditionalGeneration):
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
                    items.append(
                        EncodedItem(
                            "image", emb, self.visual_dim, grid_positions(t, h // merge, w // merge)
                        )
                    )
            else:
                embeds = self._process_video_input(value)
                for emb, (t, h, w) in zip(embeds, value["video_grid_thw"].tolist(), strict=True):
                    # Each frame is its own run after its timestamp text: (0, h, w) per frame.
                    positions = grid_positions(t, h // merge, w // merge)
                    positions[:, 0] = 0
                    items.append(EncodedItem("video", emb, self.visual_dim, positions, frames=t))
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
