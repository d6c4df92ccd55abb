# SPDX-License-Identifier: Apache-2.0
"""Usage rewriting: the pruning outcome added to ``usage``, for JSON bodies and SSE streams alike.

One :func:`add_usage` decides where a payload's ``usage`` lives (top level for chat, completions,
chat batch and SageMaker ``/invocations``; ``response.usage`` for the Responses API's events) and
adds the fields; :class:`UsageRewriter` applies it to a whole JSON body or to each event of a
stream, and reports whether the response reached its end (``[DONE]`` or a final Responses event),
which is what the metrics count.

A request that asked ``pruning_detail`` also gets ``usage.pruning_detail``
(:meth:`mipruner_vllm.outcome.RequestOutcome.pruning_detail`) in its final usage only: the whole
JSON body, the usage-only chunk that ends a chat or completions stream (``"choices": []``), or
the Responses API's final event.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mipruner_vllm.outcome import RequestOutcome
from mipruner_vllm.server.policy import RequestRefused

#: Responses API stream events after which a response is complete.
RESPONSES_FINAL_EVENTS = ("response.completed", "response.incomplete")


def usage_fields(outcome: RequestOutcome, final: bool = True) -> dict[str, Any]:
    """The fields this layer adds to ``usage`` (see :class:`.protocol.PruningUsage`); the
    pruning detail only to the ``final`` usage of a response, and only when it was asked (a
    request without media that asked gets an empty list)."""
    fields: dict[str, Any] = {
        "visual_tokens": outcome.visual_tokens,
        "visual_tokens_kept": outcome.visual_tokens_kept,
    }
    detail = outcome.pruning_detail() if final else None
    if detail is not None:
        fields["pruning_detail"] = detail
    return fields


def check_detail_request(body: dict[str, Any], params: Any) -> None:
    """Refuse a streamed request that asks ``pruning_detail`` but no final usage chunk (where
    the detail would come): it would be silently dropped otherwise."""
    if params is None or not params.pruning_detail or not body.get("stream"):
        return
    options = body.get("stream_options")
    if not (isinstance(options, dict) and options.get("include_usage") is True):
        raise RequestRefused(
            "pruning_detail",
            "in a stream the detail comes with the final usage chunk; "
            'set "stream_options": {"include_usage": true}',
        )


def dumps(payload: Any) -> bytes:
    # Same settings as Starlette's JSONResponse, which vLLM's handlers use.
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def add_usage(payload: Any, fields: dict[str, Any]) -> bool:
    """Add ``fields`` to the ``usage`` object of ``payload`` in place; False if it has none."""
    if not isinstance(payload, dict):
        return False
    for holder in (payload, payload.get("response")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            holder["usage"].update(fields)
            return True
    return False


class UsageRewriter:
    """Rewrites one response body (``mode`` ``"json"``) or event stream (``"sse"``).

    SSE events may be split across ASGI body messages, so bytes are buffered up to the blank line
    that ends an event. ``complete`` says whether the body was a whole JSON object, or the stream
    carried its final event; ``model`` is the served model name read from the response.
    """

    def __init__(self, mode: str, extra: Callable[[bool], dict[str, Any]]) -> None:
        self.mode = mode
        self._extra = extra
        self._buffer = b""
        self.model: str | None = None
        self.complete = False

    # -- JSON ------------------------------------------------------------------------------

    def rewrite_json(self, data: bytes) -> bytes:
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            return data
        # vLLM answers a request whose client went away with a 200 whose body is ``null``.
        self.complete = isinstance(payload, dict)
        if isinstance(payload, dict) and isinstance(payload.get("model"), str):
            self.model = payload["model"]
        if add_usage(payload, self._extra(True)):
            return dumps(payload)
        return data

    # -- SSE ---------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            event, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            out.append(self._rewrite_event(event))
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def _rewrite_event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        index = next((i for i, line in enumerate(lines) if line.startswith(b"data: ")), None)
        if index is None:
            return event
        data = lines[index][len(b"data: ") :]
        if data.strip() == b"[DONE]":
            self.complete = True
            return event
        wants_model = self.model is None
        final = any(name.encode() in event for name in RESPONSES_FINAL_EVENTS)
        if b'"usage"' not in data and not wants_model and not final:
            return event
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            return event
        if not isinstance(payload, dict):
            return event
        if isinstance(payload.get("type"), str) and payload["type"] in RESPONSES_FINAL_EVENTS:
            self.complete = True
        if wants_model:
            model = payload.get("model")
            if not isinstance(model, str) and isinstance(payload.get("response"), dict):
                model = payload["response"].get("model")
            if isinstance(model, str):
                self.model = model
        # The usage-only chunk closes a chat/completions stream; a final event a Responses one.
        last = payload.get("choices") == [] or payload.get("type") in RESPONSES_FINAL_EVENTS
        if not add_usage(payload, self._extra(last)):
            return event
        lines[index] = b"data: " + dumps(payload)
        return b"\n".join(lines)
