# SPDX-License-Identifier: Apache-2.0
"""The pruning layer on vLLM's OpenAI server: one pure-ASGI middleware.

vLLM loads it through its own ``--middleware`` hook (the launcher adds the flag), so it runs in
every API-server process vLLM starts, including ``--api-server-count > 1``. For
``POST /v1/chat/completions`` and ``POST /v1/completions`` it

1. validates the top-level pruning fields (:mod:`.protocol`) and any client
   ``mm_processor_kwargs`` against the allow-list: a bad value is an HTTP 400 with an OpenAI
   error body naming the field, before vLLM sees the request;
2. rewrites the body: pruning fields leave the top level and the fully resolved, normalised
   parameters go into ``mm_processor_kwargs`` (sorted keys, floats as floats, so equal settings
   hash equally in vLLM's caches). This allow-list is what makes ``--trust-request-mm-kwargs``
   safe: no other processor argument (resolution, and so cost) ever reaches the processor;
3. runs the request inside :func:`mipruner_vllm.outcome.collect`, so the processor's per-item
   records land in this request's outcome, and adds them to ``usage`` (JSON body, or each SSE
   chunk that carries ``usage``);
4. counts the outcome in the ``mipruner_`` metrics once the request finished with 200.

On every other JSON ``POST`` (tokenize, pooling, responses, chat batch...) it applies the same
``mm_processor_kwargs`` allow-list, since ``--trust-request-mm-kwargs`` is server-wide, and refuses
top-level pruning fields there instead of letting vLLM ignore them. It also adds the pruning
fields to ``GET /openapi.json``. Everything else passes through untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mipruner_vllm import metrics
from mipruner_vllm.config import get_settings
from mipruner_vllm.errors import PruningParameterError
from mipruner_vllm.outcome import RequestOutcome, collect
from mipruner_vllm.params import (
    PRUNING_PREFIXES,
    REQUEST_FIELDS,
    params_from_request,
    request_fields,
)
from mipruner_vllm.server import hooks
from mipruner_vllm.server.protocol import (
    FIELD_TYPES,
    allowed,
    bad_request,
    openapi_with_pruning,
)

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
GENERATE_PATHS = (CHAT_PATH, COMPLETIONS_PATH)


def _json_type_ok(value: Any, json_type: str) -> bool:
    # bool is a subclass of int in Python but never a number in this API.
    if isinstance(value, bool):
        return False
    if json_type == "number":
        return isinstance(value, int | float)
    if json_type == "integer":
        return isinstance(value, int)
    return isinstance(value, str)


def prepare_body(body: dict[str, Any], *, endpoint: str, pruning_enabled: bool) -> dict[str, Any]:
    """Validate the pruning fields of a request body and return the body vLLM should see.

    ``endpoint`` is the request path. On the two generate routes the pruning fields are top-level
    fields; on every other JSON route (tokenize, pooling, responses, chat batch...) they may only
    come inside ``mm_processor_kwargs``, and a top-level one is refused rather than ignored.
    ``--trust-request-mm-kwargs`` is server-wide, so the ``mm_processor_kwargs`` allow-list is
    applied on every route. Raises :class:`PruningParameterError` (``field`` as the client spelled
    it). A pure function of the body and the settings, so it is unit-testable without a server.
    """
    generate = endpoint in GENERATE_PATHS
    given: dict[str, Any] = {}
    for key in list(body):
        if key in REQUEST_FIELDS and generate:
            value = body.pop(key)
            if value is not None:  # null = "use the server default", as in the OpenAI API
                given[key] = value
        elif key in REQUEST_FIELDS:
            raise PruningParameterError(
                key, f"top-level pruning fields are accepted on {CHAT_PATH} and {COMPLETIONS_PATH}; "
                "on this route put them in mm_processor_kwargs"
            )
        elif key.startswith(PRUNING_PREFIXES):
            raise PruningParameterError(key, "unknown pruning field; allowed: " + ", ".join(REQUEST_FIELDS))

    client_kwargs = body.pop("mm_processor_kwargs", None)
    if client_kwargs is not None:
        if not isinstance(client_kwargs, dict):
            raise PruningParameterError(
                "mm_processor_kwargs", "must be an object whose keys are among: " + ", ".join(REQUEST_FIELDS)
            )
        for key, value in client_kwargs.items():
            param = f"mm_processor_kwargs.{key}"
            if key not in REQUEST_FIELDS:
                raise PruningParameterError(
                    param, "not an allowed processor argument; allowed: " + ", ".join(REQUEST_FIELDS)
                )
            if key in given:
                raise PruningParameterError(param, "given both at the top level and in mm_processor_kwargs")
            if value is not None:
                given[key] = value

    for key, value in given.items():
        if not _json_type_ok(value, FIELD_TYPES[key]):
            raise PruningParameterError(key, f"must be {allowed(key)}, got {json.dumps(value)} "
                                             f"(a JSON {type(value).__name__}, expected a JSON {FIELD_TYPES[key]})")
    params = params_from_request(given, settings=get_settings())

    if not pruning_enabled:
        if given:
            raise PruningParameterError(
                sorted(given)[0], "the served model has no pruning support (its architecture is not one "
                "the mipruner plugin handles), so pruning fields cannot be honoured"
            )
        return body
    if endpoint == CHAT_PATH or (not generate and client_kwargs is not None):
        # Always the fully resolved set: the processor then never falls back to its own defaults,
        # and equal effective settings give byte-equal kwargs (and equal multimodal hashes).
        body["mm_processor_kwargs"] = request_fields(params)
    # /v1/completions carries no media in vLLM 0.32 (text or token prompts only), so the validated
    # fields have nothing to act on there; usage then reports 0 visual tokens.
    return body


def usage_fields(outcome: RequestOutcome) -> dict[str, int]:
    """The fields this layer adds to ``usage`` (see :class:`.protocol.PruningUsage`)."""
    return {"visual_tokens": outcome.visual_tokens, "visual_tokens_kept": outcome.visual_tokens_kept}


class _SSEUsageRewriter:
    """Adds the pruning fields to every ``data:`` event of an SSE stream that carries ``usage``.

    Events may be split across ASGI body messages, so bytes are buffered up to the blank line
    that ends an event.
    """

    def __init__(self, extra: Callable[[], dict[str, int]]) -> None:
        self._extra = extra
        self._buffer = b""
        self.model: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            event, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            out.append(self._rewrite(event))
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def _rewrite(self, event: bytes) -> bytes:
        if not event.startswith(b"data: {"):
            return event
        wants_model = self.model is None
        if b'"usage"' not in event and not wants_model:
            return event
        try:
            payload = json.loads(event[len(b"data: ") :])
        except ValueError:
            return event
        if wants_model and isinstance(payload.get("model"), str):
            self.model = payload["model"]
        if not isinstance(payload.get("usage"), dict):
            return event
        payload["usage"].update(self._extra())
        return b"data: " + _dumps(payload) + b"\n\n"


def _dumps(payload: Any) -> bytes:
    # Same settings as Starlette's JSONResponse, which vLLM's handlers use.
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields ``body`` once, then defers to the real one (disconnect detection)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_json(scope: Scope) -> bool:
    headers = dict(scope.get("headers", []))
    return headers.get(b"content-type", b"").split(b";")[0].strip().lower() == b"application/json"


def _set_content_length(headers: list[tuple[bytes, bytes]], length: int | None) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    if length is not None:
        kept.append((b"content-length", str(length).encode()))
    return kept


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = _dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class PruningMiddleware:
    """Pure-ASGI pruning layer (see the module docstring). Loaded by ``--middleware``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if scope["method"] == "POST" and path in GENERATE_PATHS:
                return await self._generate(scope, receive, send, path)
            if scope["method"] == "POST" and _is_json(scope):
                return await self._guard(scope, receive, send, path)
            if scope["method"] == "GET" and path == getattr(scope.get("app"), "openapi_url", None):
                return await self._openapi(scope, receive, send)
        await self.app(scope, receive, send)

    async def _rewrite_request(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> tuple[Scope, Receive, dict[str, Any] | None]:
        """Read, validate and rewrite the JSON body. Returns the scope and receive to call vLLM
        with and the rewritten body, or a None body when a 400 has already been sent."""
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            # Not a JSON object: vLLM's own request validation answers it.
            return scope, _replay(raw, receive), {}
        try:
            body = prepare_body(body, endpoint=path, pruning_enabled=hooks.pruning_enabled(scope.get("app")))
        except PruningParameterError as exc:
            await _send_json(send, 400, bad_request(exc.field, exc.message).model_dump())
            return scope, receive, None
        # allow_nan: NaN in a non-pruning field is vLLM's to judge (its parser reads it), not a 500 here.
        raw = json.dumps(body, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode()
        scope = dict(scope)
        scope["headers"] = _set_content_length(list(scope.get("headers", [])), len(raw))
        return scope, _replay(raw, receive), body

    async def _guard(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Any other JSON POST: the allow-list on ``mm_processor_kwargs``, nothing else."""
        scope, receive, body = await self._rewrite_request(scope, receive, send, path)
        if body is not None:
            await self.app(scope, receive, send)

    async def _generate(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        scope, receive, body = await self._rewrite_request(scope, receive, send, path)
        if body is None:
            return
        app = scope.get("app")
        if not hooks.pruning_enabled(app):
            return await self.app(scope, receive, send)
        hooks.ensure_outcome_context(app)
        with collect() as outcome:
            status, model = await self._run_with_usage(scope, receive, send, outcome)
        if status == 200:
            metrics.record_request(body.get("model") or model or "unknown", outcome)

    async def _run_with_usage(
        self, scope: Scope, receive: Receive, send: Send, outcome: RequestOutcome
    ) -> tuple[int, str | None]:
        """Run vLLM's handler, adding the pruning outcome to ``usage`` of a 200 response."""
        state: dict[str, Any] = {"status": 0, "start": None, "mode": "pass", "buffer": b"", "model": None}
        sse = _SSEUsageRewriter(lambda: usage_fields(outcome))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if message["status"] == 200 and content_type.startswith(b"application/json"):
                    state["mode"], state["start"] = "json", message  # held until the body is known
                    return
                if message["status"] == 200 and content_type.startswith(b"text/event-stream"):
                    state["mode"] = "sse"
                    message = {**message, "headers": _set_content_length(headers, None)}
                await send(message)
                return
            if message["type"] != "http.response.body" or state["mode"] == "pass":
                await send(message)
                return
            more = message.get("more_body", False)
            if state["mode"] == "sse":
                data = sse.feed(message.get("body", b""))
                if not more:
                    data += sse.flush()
                await send({"type": "http.response.body", "body": data, "more_body": more})
                return
            state["buffer"] += message.get("body", b"")
            if more:
                return
            data = state["buffer"]
            try:
                payload = json.loads(data)
            except ValueError:
                payload = None
            if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                payload["usage"].update(usage_fields(outcome))
                state["model"] = payload.get("model")
                data = _dumps(payload)
            start = state["start"]
            await send({**start, "headers": _set_content_length(list(start.get("headers", [])), len(data))})
            await send({"type": "http.response.body", "body": data, "more_body": False})

        await self.app(scope, receive, send_wrapper)
        return state["status"], state["model"] or sse.model

    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve vLLM's OpenAPI document with the pruning fields added."""
        chunks: list[bytes] = []
        start: dict[str, Any] = {}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        data = b"".join(chunks)
        if start.get("status") == 200:
            data = _dumps(openapi_with_pruning(json.loads(data)))
        await send({**start, "headers": _set_content_length(list(start.get("headers", [])), len(data))})
        await send({"type": "http.response.body", "body": data, "more_body": False})
