# SPDX-License-Identifier: Apache-2.0
"""What the server itself says about a run: vLLM's TTFT histogram, read from ``/metrics``."""

from __future__ import annotations

__all__ = ["SERVER_TTFT_METRIC", "server_ttft_mean", "server_ttft_totals"]

#: Server-side time to first token (vLLM's histogram), read from /metrics before and after a run.
SERVER_TTFT_METRIC = "vllm:time_to_first_token_seconds"


def server_ttft_totals(root_url: str) -> tuple[float, float] | None:
    """(sum, count) of vLLM's TTFT histogram over all its series, or None if not scrapeable."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(root_url + "/metrics", timeout=30).text
        total, count, found = 0.0, 0.0, False
        for family in text_string_to_metric_families(text):
            if family.name != SERVER_TTFT_METRIC:
                continue
            for sample in family.samples:
                if sample.name == SERVER_TTFT_METRIC + "_sum":
                    total, found = total + sample.value, True
                elif sample.name == SERVER_TTFT_METRIC + "_count":
                    count += sample.value
        return (total, count) if found else None
    except (httpx.HTTPError, ValueError):
        return None


def server_ttft_mean(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
