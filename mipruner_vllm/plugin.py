# SPDX-License-Identifier: Apache-2.0
"""The ``vllm.general_plugins`` entry point: registers the MI-Pruner architectures with vLLM.

vLLM calls :func:`register` in *every* process it starts (API server, engine core, workers), so
it is idempotent and cheap: it checks the installed vLLM once (the supported range and every
declared vLLM name, :mod:`mipruner_vllm.integration.vllm_surface`), then registers each
pruning-aware architecture under its own name as a lazy ``module:Class`` string. Nothing is
imported from the model modules until vLLM resolves one of those names, which happens only for
an engine launched with ``hf_overrides={"architectures": ["MIPruner..."]}`` (see
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
    from mipruner_vllm.integration import vllm_surface
    from mipruner_vllm.integration.launch import MODEL_CLASSES

    version = vllm_surface.check_installed(skip_version_check=get_settings().skip_version_check)
    registry = vllm_surface.resolve("ModelRegistry")
    supported = registry.get_supported_archs()
    for name, target in MODEL_CLASSES.items():
        if name not in supported:
            registry.register_model(name, target)
    _REGISTERED = True
    logger.debug("mipruner: registered %d architectures with vllm==%s", len(MODEL_CLASSES), version)
