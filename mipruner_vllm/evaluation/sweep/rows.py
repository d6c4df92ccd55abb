# SPDX-License-Identifier: Apache-2.0
"""One CSV row per run, built the same way for JSONL and lmms-eval runs."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from mipruner_vllm.evaluation.sweep.settings import Setting

__all__ = ["SweepRow", "make_row", "rounded"]


@dataclass
class SweepRow:
    """One run; the CSV header is these field names, in this order."""

    setting: str
    repeat: int
    dataset: str
    status: str  # ok | partial | failed
    items: int
    requests_failed: int
    accuracy: float | None
    metric: str
    keep_ratio: float | None
    keep_tokens: int | None
    pruning_method: str
    mi_lambda: float | None
    fields: str  # the request fields as JSON
    visual_tokens: int | None
    visual_tokens_kept: int | None
    kept_fraction: float | None
    prompt_tokens_mean: float | None
    ttft_s_p50: float | None
    ttft_s_mean: float | None
    latency_s_p50: float | None
    server_ttft_s_mean: float | None
    wall_s: float
    model: str
    error: str = ""
    timestamp: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def make_row(
    setting: Setting,
    *,
    dataset: str,
    status: str,
    items: int,
    failed: int,
    model: str,
    accuracy: float | None,
    metric: str,
    visual: int | None,
    kept: int | None,
    prompt_mean: float | None,
    ttft_p50: float | None,
    ttft_mean: float | None,
    latency_p50: float | None,
    server_ttft: float | None,
    wall: float,
    error: str,
) -> SweepRow:
    f = setting.fields
    return SweepRow(
        setting=setting.label,
        repeat=setting.repeat,
        dataset=dataset,
        status=status,
        items=items,
        requests_failed=failed,
        accuracy=accuracy,
        metric=metric,
        keep_ratio=f.get("keep_ratio") if isinstance(f.get("keep_ratio"), (int, float)) else None,
        keep_tokens=f.get("keep_tokens") if isinstance(f.get("keep_tokens"), int) else None,
        pruning_method=str(f.get("pruning_method", "")),
        mi_lambda=f.get("mi_lambda") if isinstance(f.get("mi_lambda"), (int, float)) else None,
        fields=json.dumps(f, sort_keys=True),
        visual_tokens=visual,
        visual_tokens_kept=kept,
        kept_fraction=rounded(kept / visual) if visual and kept is not None else None,
        prompt_tokens_mean=rounded(prompt_mean, 2),
        ttft_s_p50=rounded(ttft_p50),
        ttft_s_mean=rounded(ttft_mean),
        latency_s_p50=rounded(latency_p50),
        server_ttft_s_mean=rounded(server_ttft),
        wall_s=round(wall, 2),
        model=model,
        error=error.replace("\n", " "),
    )
