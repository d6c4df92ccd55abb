# SPDX-License-Identifier: Apache-2.0
"""The selection core: pure torch, importable without vLLM (and without Triton)."""

from mipruner_vllm.pruning.select import select_tokens, select_tokens_batch

__all__ = ["select_tokens", "select_tokens_batch"]
