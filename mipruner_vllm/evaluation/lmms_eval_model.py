# SPDX-License-Identifier: Apache-2.0
"""The lmms-eval model ``mipruner``: lmms-eval's OpenAI-compatible chat model plus pruning fields.

Usage::

    lmms-eval --model mipruner \\
        --model_args base_url=http://127.0.0.1:8000/v1,keep_ratio=0.25 --tasks gqa,pope

Every ``--model_args`` key that is a pruning request field (``keep_ratio``, ``keep_tokens``,
``pruning_method``, ``mi_lambda``, ``mi_tau``, ``mi_aggregation``, ``mi_normalization``,
``trim_stage1_ratio``, ``pruning_seed``) goes at the top level of every request; every other key
is lmms-eval's ``openai`` model's (``model``, ``num_concurrent``, ``max_retries``, ...), with two
more: ``usage_report=PATH`` writes the visual-token tally as JSON after each generation pass, and
``model`` defaults to the first model the endpoint lists. The stock model's requests are
otherwise sent unchanged: same messages, images, ``max_tokens``, temperature and retries, so
scores compare with the stock ``--model openai`` run of the same tasks.

This module imports lmms-eval; it is loaded only by lmms-eval (see :mod:`.lmms_eval_plugin`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmms_eval.models.chat.openai import OpenAICompatible
from loguru import logger

from mipruner_vllm.evaluation.client import PruningClient, UsageTally
from mipruner_vllm.evaluation.fields import describe, split_model_args

#: lmms-eval's text for a sample whose every retry failed (it is then scored as a wrong answer).
FAILED_SAMPLE_PREFIX = "[LMMS_EVAL_REQUEST_FAILED"


class MIPrunerChat(OpenAICompatible):
    """lmms-eval's ``openai`` chat model whose client adds the pruning fields to every request."""

    is_simple = False

    def __init__(self, *args: Any, usage_report: str | None = None, **kwargs: Any) -> None:
        fields, rest = split_model_args(kwargs)
        # A local server needs no key, but the openai client refuses to start without one.
        if rest.get("api_key") is None and not os.environ.get("OPENAI_API_KEY"):
            rest["api_key"] = "unused"
        super().__init__(*args, **rest)
        self.pruning_fields = fields
        self.usage_report = Path(usage_report) if usage_report else None
        self.tally = UsageTally()
        self.failed_samples = 0
        self.client = PruningClient(self.client, fields, self.tally)
        if rest.get("model") is None and rest.get("model_version") is None:
            self.model_version = self.client.models.list().data[0].id
        logger.info(f"mipruner: model {self.model_version}, every request adds {describe(fields)}")

    def generate_until(self, requests: Any) -> Any:
        results = super().generate_until(requests)
        self.failed_samples += sum(
            1 for r in results if str(getattr(r, "text", r)).startswith(FAILED_SAMPLE_PREFIX)
        )
        summary = self.report()
        logger.info(f"mipruner {describe(self.pruning_fields)}: {self.tally.describe()}")
        if summary["samples_failed"] or summary["responses_without_pruning_usage"]:
            logger.warning(
                f"mipruner: {summary['samples_failed']} samples failed (lmms-eval scores them as "
                f"wrong answers); first error: {summary['first_error']}"
            )
        return results

    def report(self) -> dict[str, Any]:
        """The tally of every request so far, plus the setting; written to ``usage_report``."""
        summary = {
            "pruning_fields": self.pruning_fields,
            "model": self.model_version,
            "samples_failed": self.failed_samples,
            **self.tally.summary(),
        }
        if self.usage_report is not None:
            self.usage_report.parent.mkdir(parents=True, exist_ok=True)
            self.usage_report.write_text(json.dumps(summary, indent=2) + "\n")
        return summary
