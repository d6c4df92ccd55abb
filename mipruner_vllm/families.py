# SPDX-License-Identifier: Apache-2.0
"""The model families the plugin supports: one record each, free of vLLM (and torch) imports.

Everything that enumerates families derives from :data:`FAMILIES`: the launch tables
(:mod:`mipruner_vllm.integration.launch`: the stock -> pruning-aware architecture names, the
lazy model classes vLLM registers, which models need M-RoPE position recompute), the ``--arch``
choices of ``mipruner-vllm demo-model``, the demo checkpoints
(:data:`mipruner_vllm.demo_model.families.FAMILIES` has one record per key here, a unit test
holds them equal), and the parametrisation of the tests. The vLLM names a family's module uses
are declared literally in :mod:`mipruner_vllm.integration.vllm_surface.declaration` (grep finds
them); a unit test checks that every family here has its model class declared there.

Adding a family: one :class:`Family` record below, its ``integration/models/<module>.py``, its
demo record and its vLLM names in the declaration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["FAMILIES", "Family", "by_architecture"]

_MODELS_PACKAGE = "mipruner_vllm.integration.models"


@dataclasses.dataclass(frozen=True)
class Family:
    """One supported architecture."""

    #: The family's name everywhere in the project (``--arch``, demo checkpoint, tests).
    key: str
    #: vLLM's (and transformers') architecture name in a checkpoint's ``config.json``.
    architecture: str
    #: The module under ``mipruner_vllm/integration/models/`` that defines the pruning-aware
    #: class (several families may share one, e.g. Qwen3.5 and Qwen3.5-MoE).
    module: str
    #: M-RoPE positions: kept tokens keep their original positions, which needs the runner's
    #: position recompute armed (:func:`mipruner_vllm.integration.launch.engine_overrides`).
    mrope: bool
    #: Accepts video items.
    video: bool
    #: The processor output field that gives each image's layout (``None``: fixed layout).
    grid_field: str | None

    @property
    def pruning_architecture(self) -> str:
        """The name the plugin registers the pruning-aware class under (and the class name)."""
        return f"MIPruner{self.architecture}"

    @property
    def model_class(self) -> str:
        """Lazy ``module:Class`` reference for vLLM's ``ModelRegistry.register_model``."""
        return f"{_MODELS_PACKAGE}.{self.module}:{self.pruning_architecture}"


def _qwen(key: str, architecture: str, module: str | None = None) -> Family:
    return Family(key, architecture, module or key, True, True, "image_grid_thw")


#: Every supported family, by key.
FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        family.key: family
        for family in (
            _qwen("qwen2_vl", "Qwen2VLForConditionalGeneration"),
            _qwen("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
            _qwen("qwen3_vl", "Qwen3VLForConditionalGeneration"),
            _qwen("qwen3_5", "Qwen3_5ForConditionalGeneration"),
            _qwen("qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", module="qwen3_5"),
            Family("llava", "LlavaForConditionalGeneration", "llava", False, False, None),
            Family(
                "llava_next",
                "LlavaNextForConditionalGeneration",
                "llava_next",
                False,
                False,
                "image_sizes",
            ),
        )
    }
)


def by_architecture(architecture: str) -> Family | None:
    """The family of a stock or pruning-aware architecture name, or None."""
    for family in FAMILIES.values():
        if architecture in (family.architecture, family.pruning_architecture):
            return family
    return None
