# SPDX-License-Identifier: Apache-2.0
"""Accuracy against keep ratio, measured with the evaluation tools users already run.

Three ways in, all sending the pruning fields at the top level of every chat request:

* :mod:`.lmms_eval_model`: an lmms-eval model (``lmms-eval --model mipruner``), registered
  through lmms-eval's ``lmms_eval.models`` entry-point group (:mod:`.lmms_eval_plugin`);
* :mod:`.sweep`: ``mipruner-vllm eval-sweep``, every setting of a keep-ratio sweep over a JSONL
  of image / question / answer (or an lmms-eval task list), one CSV and one plot;
* VLMEvalKit needs no code (``--extra-body``; see docs/evaluation.md).

Nothing here imports vLLM, and lmms-eval is imported only by the lmms-eval model itself, so the
package works with ``pip install "mipruner-vllm[eval]"`` on a machine with no engine.
"""

from __future__ import annotations

from mipruner_vllm.evaluation.client import PruningClient, UsageTally
from mipruner_vllm.evaluation.fields import pruning_fields, split_model_args

__all__ = ["PruningClient", "UsageTally", "pruning_fields", "split_model_args"]
