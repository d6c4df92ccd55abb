# SPDX-License-Identifier: Apache-2.0
"""Triton selection kernels, installed as ``mipruner_vllm.kernels``: pure ops on packed tensors.

* :mod:`~mipruner_vllm.kernels.mi_select`: fused MI-Pruner scores + top-k (lambda = 1).
* :mod:`~mipruner_vllm.kernels.mi_greedy`: greedy MI-Pruner (lambda < 1), all steps on device.
* :mod:`~mipruner_vllm.kernels.launch`: the one launcher of both (:func:`~mipruner_vllm.kernels.
  launch.mi_prune`), shared by production, the kernel tests and the benchmark; the registry of
  every kernel (``KERNELS``) and the warm-up that compiles them (``warm_up``).
* :mod:`~mipruner_vllm.kernels.tiles`: Triton helpers the kernels share (inlined).
* :mod:`~mipruner_vllm.kernels._runtime`: the packed varlen layout and whether Triton can run.
* ``python -m mipruner_vllm.kernels --aot sm_80,sm_90``: ahead-of-time compile check
  (:mod:`~mipruner_vllm.kernels.aot`), which needs no GPU.

The kernels know nothing of request parameters, settings or backend choice: which items go to
them is decided by :mod:`mipruner_vllm.pruning.dispatch`. Nothing in this package imports from
:mod:`mipruner_vllm.pruning`, and this module does not import triton, so ``import
mipruner_vllm.kernels`` works where triton is missing.
"""

from __future__ import annotations

from mipruner_vllm.kernels._runtime import interpret_enabled, triton_status

__all__ = ["interpret_enabled", "triton_status"]
