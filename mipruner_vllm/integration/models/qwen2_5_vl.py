# SPDX-License-Identifier: Apache-2.0
"""MI-Pruner for Qwen2.5-VL: the Qwen2-VL glue on Qwen2.5-VL's classes.

Qwen2.5-VL already implements vLLM's pruning interface for EVS; the mixin replaces its
``embed_multimodal`` (no EVS, MI selection instead), its positions (see :mod:`..mrope` for the two
upstream inaccuracies this fixes) and its processor's placeholder counts.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from mipruner_vllm.integration.models.qwen2_vl import QwenModelMixin, QwenProcessorMixin
from mipruner_vllm.integration.processing import MIPrunerInfoMixin


class MIPrunerQwen2_5_VLProcessingInfo(MIPrunerInfoMixin, Qwen2_5_VLProcessingInfo):
    pass


class MIPrunerQwen2_5_VLMultiModalProcessor(QwenProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerQwen2_5_VLMultiModalProcessor,
    info=MIPrunerQwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class MIPrunerQwen2_5_VLForConditionalGeneration(
    QwenModelMixin, Qwen2_5_VLForConditionalGeneration
):
    pass
