# SPDX-License-Identifier: Apache-2.0
"""Pruning-aware subclasses of vLLM's multimodal models, one module per family.

Each module is imported lazily by vLLM when an engine selects its ``MIPruner<Arch>`` name. Which
module defines which class is a record of :data:`mipruner_vllm.families.FAMILIES`; nothing here
enumerates the families.
"""
