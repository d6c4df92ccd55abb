# SPDX-License-Identifier: Apache-2.0
"""The ``vllm.general_plugins`` entry point: registers the MI-Pruner architectures with vLLM.

vLLM calls :func:`register` in *every* process it starts (API server, engine core, workers), so
it is idempotent and cheap: it checks the vLLM version once, then registers each pruning-aware
architecture under its own name as a lazy ``module:Class`` string. Nothing is imported from the
model modules until vLLM resolves one of those names, which happens only for an engine launched
with ``hf_overrides={"architectures": ["MIPruner..."]}`` (see
:func:`mipruner_vllm.integration.launch.engine_overrides`). Stock architectures are untouched.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_REGISTERED = False


def register() -> None:
    """Register the MI-Pruner architectures (idempotent; raises on an unsupported vLLM)."""
    global _REGISTERED
    if _REGISTERED:
        return

    from mipruner_vllm.config import get_settings
    from mipruner_vllm.integration.compat import (
        check_vllm_version,
        is_supported,
        supported_vllm_range,
    )

    settings = get_settings()
    version = check_vllm_version(skip=settings.skip_version_check)
    if not is_supported(version, supported_vllm_range()):
        logger.warning(
            "mipruner: vllm==%s is outside the supported range vllm%s; loading anyway because "
            "MIPRUNER_SKIP_VERSION_CHECK is set",
            version,
            supported_vllm_range(),
        )

    from vllm import ModelRegistry

    from mipruner_vllm.integration.launch import MODEL_CLASSES

    supported = ModelRegistry.get_supported_archs()
    for name, target in MODEL_CLASSES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
    _REGISTERED = True
    logger.debug("mipruner: registered %d architectures with vllm==%s", len(MODEL_CLASSES), version)
