# SPDX-License-Identifier: Apache-2.0
"""An OpenAI client that adds the pruning fields to every chat request and counts the outcome.

:class:`PruningClient` wraps an ``openai.OpenAI`` client (or anything with the same
``chat.completions.create``). Every ``create`` call goes out exactly as the caller wrote it,
except that the pruning fields are merged into ``extra_body``, which the openai client sends at
the top level of the JSON body, where the server reads them. The wrapper never retries, never
swallows an error and never adds other options, so an evaluation tool behaves as it does with
the stock client; it only reads each response's ``usage`` (``visual_tokens``,
``visual_tokens_kept``) and time into a :class:`UsageTally`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The usage fields a mipruner-vllm server adds (docs/server.md, "Usage fields").
VISUAL_TOKENS = "visual_tokens"
VISUAL_TOKENS_KEPT = "visual_tokens_kept"


def usage_value(usage: Any, name: str) -> int | None:
    """A usage field of an openai response (a pydantic model with extras) or a plain dict."""
    if usage is None:
        return None
    if isinstance(usage, Mapping):
        value = usage.get(name)
    else:
        value = getattr(usage, name, None)
        if value is None:
            value = (getattr(usage, "model_extra", None) or {}).get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class UsageTally:
    """What the requests of one run cost and kept; safe to update from many threads."""

    requests: int = 0
    failed: int = 0
    #: Responses whose usage had no visual-token fields: the endpoint is not mipruner-vllm (or
    #: a proxy dropped the fields), so the run cannot be trusted to have pruned.
    without_pruning_usage: int = 0
    visual_tokens: int = 0
    visual_tokens_kept: int = 0
    prompt_tokens: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, usage: Any, latency_s: float) -> None:
        visual = usage_value(usage, VISUAL_TOKENS)
        kept = usage_value(usage, VISUAL_TOKENS_KEPT)
        prompt = usage_value(usage, "prompt_tokens")
        with self._lock:
            self.requests += 1
            self.latencies_s.append(latency_s)
            if visual is None or kept is None:
                self.without_pruning_usage += 1
            else:
                self.visual_tokens += visual
                self.visual_tokens_kept += kept
            self.prompt_tokens += prompt or 0

    def record_failure(self, error: BaseException) -> None:
        with self._lock:
            self.requests += 1
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{type(error).__name__}: {error}"[:500]

    @property
    def succeeded(self) -> int:
        return self.requests - self.failed

    @property
    def kept_fraction(self) -> float | None:
        return self.visual_tokens_kept / self.visual_tokens if self.visual_tokens else None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what the lmms-eval model writes to ``usage_report``)."""
        with self._lock:
            latencies = list(self.latencies_s)
            return {
                "requests": self.requests,
                "requests_failed": self.failed,
                "responses_without_pruning_usage": self.without_pruning_usage,
                "visual_tokens": self.visual_tokens,
                "visual_tokens_kept": self.visual_tokens_kept,
                "kept_fraction": self.kept_fraction,
                "prompt_tokens": self.prompt_tokens,
                "latency_s_p50": statistics.median(latencies) if latencies else None,
                "latency_s_mean": statistics.fmean(latencies) if latencies else None,
                "first_error": self.first_error,
            }

    def describe(self) -> str:
        s = self.summary()
        kept = f"{s['kept_fraction']:.1%}" if s["kept_fraction"] is not None else "n/a"
        line = (
            f"{s['requests']} requests ({s['requests_failed']} failed): visual tokens "
            f"{s['visual_tokens']} -> {s['visual_tokens_kept']} kept ({kept})"
        )
        if s["responses_without_pruning_usage"]:
            line += (
                f"; {s['responses_without_pruning_usage']} responses had no "
                f"usage.{VISUAL_TOKENS_KEPT}: is the endpoint mipruner-vllm serve?"
            )
        return line


class _Completions:
    def __init__(self, inner: Any, fields: Mapping[str, Any], tally: UsageTally) -> None:
        self._inner = inner
        self._fields = dict(fields)
        self._tally = tally

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def create(self, **kwargs: Any) -> Any:
        request = with_pruning_fields(kwargs, self._fields)
        started = time.perf_counter()
        try:
            response = self._inner.create(**request)
        except Exception as exc:
            self._tally.record_failure(exc)
            raise
        if request.get("stream"):
            return self._observe_stream(response, started)
        self._tally.record(getattr(response, "usage", None), time.perf_counter() - started)
        return response

    def _observe_stream(self, stream: Any, started: float) -> Iterator[Any]:
        usage = None
        try:
            for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                yield chunk
        except Exception as exc:
            self._tally.record_failure(exc)
            raise
        self._tally.record(usage, time.perf_counter() - started)


class _Chat:
    def __init__(self, completions: _Completions, inner: Any) -> None:
        self.completions = completions
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def with_pruning_fields(request: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``request`` whose ``extra_body`` also carries ``fields``; nothing else changes.

    A request that already sets one of the fields to another value is refused: silently
    overriding either side would measure a setting nobody asked for.
    """
    out = dict(request)
    if not fields:
        return out
    extra = dict(out.get("extra_body") or {})
    for key, value in fields.items():
        if key in extra and extra[key] != value:
            raise ValueError(
                f"the request already sets {key}={extra[key]!r} in extra_body; "
                f"the evaluation setting is {key}={value!r}"
            )
        extra[key] = value
    out["extra_body"] = extra
    return out


class PruningClient:
    """``client`` with ``fields`` on every ``chat.completions.create``; other attributes pass
    through."""

    def __init__(
        self, client: Any, fields: Mapping[str, Any], tally: UsageTally | None = None
    ) -> None:
        self._client = client
        self.fields = dict(fields)
        self.tally = tally if tally is not None else UsageTally()
        self.chat = _Chat(
            _Completions(client.chat.completions, self.fields, self.tally), client.chat
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
