# SPDX-License-Identifier: Apache-2.0
"""mipruner-vllm: prune visual tokens before LLM prefill by cross-modal mutual information.

The public, vLLM-free API::

    from mipruner_vllm import select_tokens
    kept = select_tokens(visual, text, keep_ratio=0.25)   # ascending LongTensor of indices

Importing this package is cheap: the names below load on first use (torch with them, never
vLLM). The vLLM plugin lives in :mod:`mipruner_vllm.plugin`, loaded by vLLM through its
``vllm.general_plugins`` entry point.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MiprunerError": "mipruner_vllm.errors",
    "PruningInputError": "mipruner_vllm.errors",
    "PruningParameterError": "mipruner_vllm.errors",
    "MiprunerSettings": "mipruner_vllm.config",
    "get_settings": "mipruner_vllm.config",
    "PruningParams": "mipruner_vllm.params",
    "n_keep": "mipruner_vllm.params",
    "resolve_params": "mipruner_vllm.params",
    "select_tokens": "mipruner_vllm.pruning.select",
    "select_tokens_batch": "mipruner_vllm.pruning.select",
}

__all__ = [
    "MiprunerError",
    "MiprunerSettings",
    "PruningInputError",
    "PruningParameterError",
    "PruningParams",
    "__version__",
    "get_settings",
    "n_keep",
    "resolve_params",
    "select_tokens",
    "select_tokens_batch",
]

if TYPE_CHECKING:  # pragma: no cover
    from mipruner_vllm.config import MiprunerSettings, get_settings
    from mipruner_vllm.errors import MiprunerError, PruningInputError, PruningParameterError
    from mipruner_vllm.params import PruningParams, n_keep, resolve_params
    from mipruner_vllm.pruning.select import select_tokens, select_tokens_batch


def __getattr__(name: str) -> Any:
    # Lazy exports: the torchvision compat hook imports this package at every interpreter start.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mipruner_vllm' has no attribute {name!r}")
