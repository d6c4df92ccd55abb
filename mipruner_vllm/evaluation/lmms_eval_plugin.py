# SPDX-License-Identifier: Apache-2.0
"""lmms-eval's entry point: ``--model mipruner`` names :class:`.lmms_eval_model.MIPrunerChat`.

lmms-eval (0.7.3) loads every callable of the ``lmms_eval.models`` entry-point group while it
builds its model registry and registers the ``ModelManifest`` it returns; the class itself is
imported only when ``--model mipruner`` is asked for. This module imports lmms-eval only when
lmms-eval calls it.
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "mipruner"
CHAT_CLASS_PATH = "mipruner_vllm.evaluation.lmms_eval_model.MIPrunerChat"


def manifest() -> Any:
    """The ``ModelManifest`` of the mipruner model (a chat model: lmms-eval's chat messages)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS_PATH)
