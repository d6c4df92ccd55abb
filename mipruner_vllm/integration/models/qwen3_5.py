# SPDX-License-Identifier: Apache-2.0
"""MI-Pruner for Qwen3.5 and Qwen3.5-MoE: the Qwen3-VL glue on Qwen3.5's classes.

Qwen3.5's vision side is Qwen3-VL's (16-px patches, 2x2 merge, the same processor, placeholders
and per-frame video layout) without deepstack, so the image and video embeddings are exactly the
``visual_dim`` columns the LLM receives and everything of :mod:`.qwen3_vl` applies unchanged:
selection, the per-frame video budget, M-RoPE positions of kept tokens. The classes below put
that glue in front of vLLM's Qwen3.5 models by inheritance, so they pick up any change to it.

What differs is the language model, a hybrid of Gated DeltaNet linear attention and gated full
attention (``layer_types``). The linear-attention layers have no positions: a short causal
convolution and a recurrent state run over the tokens in prompt order, so pruning only changes
which tokens they see. vLLM manages the hybrid cache itself: it raises the attention block size
until one block holds a recurrent-state page, and with prefix caching it keeps a state per
block (``align`` mode), so prefix-cache hits come in whole (large) blocks.

Which Qwen3.5 implementation: from vLLM 0.34 the registry maps Qwen3.5 to ``vllm.models.qwen3_5``,
which picks NVIDIA's own modelling code (eager + breakable CUDA graphs, fused kernels) on CUDA and
keeps ``model_executor/models/qwen3_5.py`` elsewhere. The classes below build on whichever class
that package gives on this platform (``resolve``, per release), so the language model is stock
vLLM's and ``keep_ratio=1`` stays stock everywhere; up to 0.33 there is only the one module.
The processing info (the processor side) is the same module in every release.

Stock vLLM's Qwen3.5 declares ``supports_multimodal_pruning`` but never sets up EVS, so its own
video pruning under ``--video-pruning-rate`` (the plugin's GPU arming flag) is turned off here
too, as for Qwen3-VL.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm.model_executor.models.qwen3_5 import (
    Qwen3_5MoeProcessingInfo,
    Qwen3_5ProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder
from vllm.multimodal import MULTIMODAL_REGISTRY

from mipruner_vllm.integration.models.qwen3_vl import (
    MIPrunerQwen3VLForConditionalGeneration,
    MIPrunerQwen3VLMultiModalProcessor,
)
from mipruner_vllm.integration.processing import MIPrunerInfoMixin
from mipruner_vllm.integration.vllm_surface import resolve

# The implementation stock vLLM picks for this platform and release (see the module docstring).
Qwen3_5ForConditionalGeneration = resolve("Qwen3_5ForConditionalGeneration")
Qwen3_5MoeForConditionalGeneration = resolve("Qwen3_5MoeForConditionalGeneration")


class MIPrunerQwen3_5ProcessingInfo(MIPrunerInfoMixin, Qwen3_5ProcessingInfo):
    pass


class MIPrunerQwen3_5MoeProcessingInfo(MIPrunerInfoMixin, Qwen3_5MoeProcessingInfo):
    pass


# The MRO is: the Qwen3-VL glue (its encode and position methods, then the shared Qwen and
# selection mixins), then vLLM's Qwen3.5 model, then Qwen3-VL's; so the glue wraps Qwen3.5's
# own __init__, language model and hybrid-cache hooks, and vLLM's Qwen3-VL class comes last.
@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerQwen3VLMultiModalProcessor,
    info=MIPrunerQwen3_5ProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class MIPrunerQwen3_5ForConditionalGeneration(
    MIPrunerQwen3VLForConditionalGeneration, Qwen3_5ForConditionalGeneration
):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    MIPrunerQwen3VLMultiModalProcessor,
    info=MIPrunerQwen3_5MoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class MIPrunerQwen3_5MoeForConditionalGeneration(
    MIPrunerQwen3VLForConditionalGeneration, Qwen3_5MoeForConditionalGeneration
):
    pass


__all__: Sequence[str] = [
    "MIPrunerQwen3_5ForConditionalGeneration",
    "MIPrunerQwen3_5MoeForConditionalGeneration",
]
