# SPDX-License-Identifier: Apache-2.0
"""CPU worker that arms vLLM's M-RoPE position recompute for the MI-Pruner Qwen models.

Why: vLLM's GPU model runner calls the model's ``recompute_mrope_positions`` when
``is_multimodal_pruning_enabled`` is set in ``load_model``; the CPU model runner overrides
``load_model`` and never sets it (integration memo, B1), so pruned M-RoPE items would crash the
merge (extra position columns) or keep wrong positions. vLLM's supported knob for this is the
worker class (``--worker-cls``, ``ParallelConfig.worker_cls``; the CPU platform only fills it
when it is ``"auto"``), so no vLLM code is patched: this subclass sets the runner flag after the
model is loaded, for pruning-aware M-RoPE models only. Select it with
``worker_cls="mipruner_vllm.integration.workers.MIPrunerCPUWorker"`` (done by
:func:`mipruner_vllm.integration.launch.engine_overrides`).
"""

from __future__ import annotations

import logging
from typing import Any

from vllm.model_executor.models.interfaces import supports_multimodal_pruning
from vllm.v1.worker.cpu_worker import CPUWorker

logger = logging.getLogger(__name__)


def arm_position_recompute(model_runner: Any) -> bool:
    """Set the runner's pruning flag for an MI-Pruner M-RoPE model; True if armed."""
    model = model_runner.get_model()
    if (
        getattr(model, "mipruner_positions_armed", False)
        and supports_multimodal_pruning(model)
        and model_runner.uses_mrope
    ):
        model_runner.is_multimodal_pruning_enabled = True
        logger.info("mipruner: M-RoPE position recompute armed on the CPU model runner")
        return True
    return False


class MIPrunerCPUWorker(CPUWorker):
    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)
        arm_position_recompute(self.model_runner)
