# SPDX-License-Identifier: Apache-2.0
"""The selection core: pure torch, importable without vLLM (and without Triton).

:mod:`~mipruner_vllm.pruning.select` is the public API, :mod:`~mipruner_vllm.pruning.dispatch` the
one place that chooses between the Triton kernels and :mod:`~mipruner_vllm.pruning.reference`.
"""

from mipruner_vllm.pruning.select import Selection, select_batch, select_tokens, select_tokens_batch

__all__ = ["Selection", "select_batch", "select_tokens", "select_tokens_batch"]
