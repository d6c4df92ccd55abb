# SPDX-License-Identifier: Apache-2.0
"""The pruning layer on vLLM's OpenAI server: a small pure-ASGI dispatcher.

vLLM loads it through its own ``--middleware`` hook (the launcher adds the flag), so it runs in
every API-server process vLLM starts. It only routes; each concern lives in its own module:

* every ``POST`` whose body is JSON, on any route and whatever its ``Content-Type`` headers say
  (Starlette and vLLM read the first of duplicated headers; a decision must not depend on which
  one is read), goes through the request policy (:mod:`.policy`): a refusal is an HTTP 400 with
  an OpenAI error body naming the field, before vLLM sees anything; otherwise vLLM receives
  the policy's re-serialised body, so it reads exactly what was checked. A body sent as JSON
  that does not parse (compressed, not UTF-8, malformed, an integer too long to convert) gets
  the same 400, naming ``body`` or the integer's path;
* the media URLs of the body are named by path for the request's duration
  (:func:`.media.request_media`), so a media failure that is the client's doing is a 400
  naming ``messages[0].content[1].image_url``, say;
* on the generate routes (:data:`.policy.GENERATE_PATHS`) the request runs inside
  :func:`mipruner_vllm.outcome.collect`, the pruning outcome is added to ``usage``
  (:mod:`.usage`, JSON and SSE alike), and the outcome is counted in the ``mipruner_`` metrics
  only when the response reached the client complete (a 200 with a whole body, or a stream that
  ended with its final event, and no client disconnect);
* ``GET /openapi.json`` gets the pruning fields (:mod:`.protocol`);
* ``GET /playground`` serves the playground page when ``--playground`` is on
  (:mod:`.playground`);
* the server's life (:mod:`.lifecycle`): while the server stops, new requests and readiness
  probes get a 503; at lifespan startup uvicorn's shutdown gets a limit and the process is noted
  as serving, at lifespan shutdown a dead engine is noted for the supervisor (:mod:`.hooks`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mipruner_vllm import metrics
from mipruner_vllm.config import get_settings
from mipruner_vllm.outcome import RequestOutcome, collect
from mipruner_vllm.server import hooks, lifecycle
from mipruner_vllm.server.media import request_media  # (importing it registers the connector)
from mipruner_vllm.server.playground import PLAYGROUND_PATH, send_page
from mipruner_vllm.server.policy import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    GENERATE_PATHS,
    RequestRefused,
    apply_policy,
    parse_body,
)
from mipruner_vllm.server.protocol import bad_request, openapi_with_pruning
from mipruner_vllm.server.usage import (
    UsageRewriter,
    check_detail_request,
    dumps,
    usage_fields,
)

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["CHAT_PATH", "COMPLETIONS_PATH", "GENERATE_PATHS", "PruningMiddleware"]


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client disconnected while sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


class _Replay:
    """A receive that yields ``body`` once, then defers to the real one and notes a disconnect."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive
        self.disconnected = False

    async def __call__(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message


def _headers_for(scope: Scope, length: int | None) -> list[tuple[bytes, bytes]]:
    """The request headers vLLM should see: one Content-Type (the first, the one it reads) and
    a Content-Length matching the re-serialised body (no Transfer-Encoding: it is not chunked)."""
    kept: list[tuple[bytes, bytes]] = []
    seen_type = False
    for key, value in scope.get("headers", []):
        name = key.lower()
        if name in (b"content-length", b"transfer-encoding") or (
            name == b"content-type" and seen_type
        ):
            continue
        seen_type = seen_type or name == b"content-type"
        kept.append((key, value))
    if length is not None:
        kept.append((b"content-length", str(length).encode()))
    return kept


def _first_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (the one Starlette and vLLM read), if any."""
    value = next((v for k, v in scope.get("headers", []) if k.lower() == name), None)
    return None if value is None else value.decode("latin-1")


def _reads_json(content_type: str | None) -> bool:
    """Whether vLLM's routes parse a body with this Content-Type as JSON (FastAPI does so for
    none at all, ``application/json`` and any ``+json`` type)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type in ("", "application/json") or media_type.endswith("+json")


def _parsed(scope: Scope, raw: bytes) -> Any:
    """The JSON of the body; None when it is empty or not sent as JSON (vLLM answers those).

    Raises :class:`RequestRefused` for a body sent as JSON that does not parse or nests too deep.
    """
    if not raw.strip():
        return None
    try:
        return parse_body(raw, _first_header(scope, b"content-encoding"))
    except RecursionError:
        raise RequestRefused(
            "body", f"nested deeper than {get_settings().max_json_depth} levels"
        ) from None
    except RequestRefused:
        if _reads_json(_first_header(scope, b"content-type")):
            raise
        return None  # a form upload, say: vLLM's own parsing answers it


def _set_content_length(
    headers: list[tuple[bytes, bytes]], length: int | None
) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    if length is not None:
        kept.append((b"content-length", str(length).encode()))
    return kept


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class PruningMiddleware:
    """Pure-ASGI pruning layer (see the module docstring). Loaded by ``--middleware``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        if await lifecycle.refuse_while_stopping(scope, send):
            return
        if scope["type"] == "http":
            if scope["method"] == "POST":
                return await self._post(scope, receive, send)
            if (
                scope["method"] == "GET"
                and scope["path"] == PLAYGROUND_PATH
                and get_settings().playground
            ):
                return await send_page(send)
            if scope["method"] == "GET" and scope["path"] == getattr(
                scope.get("app"), "openapi_url", None
            ):
                return await self._openapi(scope, receive, send)
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                hooks.bound_http_shutdown(scope.get("app"))
            elif message["type"] == "lifespan.shutdown":
                hooks.note_engine_death(scope.get("app"))
            return message

        await self.app(scope, watch, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw, gone = await _read_body(receive)
        if gone:
            return
        path = scope["path"]
        app = scope.get("app")
        pruning = hooks.pruning_enabled(app)
        try:
            body = _parsed(scope, raw)
            if body is None:
                return await self.app(scope, _Replay(raw, receive), send)
            decision = apply_policy(
                body, route=path, settings=get_settings(), pruning_enabled=pruning
            )
            if decision.generate:
                check_detail_request(decision.body, decision.params)
        except RequestRefused as exc:
            return await _send_json(send, 400, bad_request(exc.field, exc.message).model_dump())
        # allow_nan: NaN in a non-pruning field is vLLM's to judge (its parser reads it), not a 500
        # here.
        forwarded = json.dumps(
            decision.body, ensure_ascii=False, allow_nan=True, separators=(",", ":")
        ).encode()
        scope = dict(scope)
        scope["headers"] = _headers_for(scope, len(forwarded))
        replay = _Replay(forwarded, receive)
        if not (decision.generate and pruning):
            with request_media(decision.media):
                return await self.app(scope, replay, send)
        hooks.ensure_outcome_context(app)
        with collect() as outcome, request_media(decision.media):
            outcome.detail_asked = bool(decision.params and decision.params.pruning_detail)
            try:
                status, rewriter, delivered = await self._run_with_usage(
                    scope, replay, send, outcome
                )
            finally:
                outcome.discard_detail()  # nothing of the request's detail outlives it
        if status == 200 and rewriter is not None and rewriter.complete and delivered:
            metrics.record_request(
                decision.body.get("model") or rewriter.model or "unknown", outcome
            )

    async def _run_with_usage(
        self, scope: Scope, receive: _Replay, send: Send, outcome: RequestOutcome
    ) -> tuple[int, UsageRewriter | None, bool]:
        """Run vLLM's handler, adding the pruning outcome to ``usage`` of a 200 response.

        Returns the status, the rewriter, and whether the last body message was sent before the
        client disconnected (a disconnect noticed only after that is the normal end of a request).
        """
        state: dict[str, Any] = {"status": 0, "start": None, "buffer": b"", "delivered": False}
        rewriter: UsageRewriter | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal rewriter
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if message["status"] == 200 and content_type.startswith(b"application/json"):
                    rewriter = UsageRewriter("json", lambda final: usage_fields(outcome, final))
                    state["start"] = message  # held until the body is known
                    return
                if message["status"] == 200 and content_type.startswith(b"text/event-stream"):
                    rewriter = UsageRewriter("sse", lambda final: usage_fields(outcome, final))
                    message = {**message, "headers": _set_content_length(headers, None)}
                await send(message)
                return
            if message["type"] != "http.response.body" or rewriter is None:
                await send(message)
                return
            more = message.get("more_body", False)
            if rewriter.mode == "sse":
                data = rewriter.feed(message.get("body", b""))
                if not more:
                    data += rewriter.flush()
                await send({"type": "http.response.body", "body": data, "more_body": more})
                state["delivered"] = not more and not receive.disconnected
                return
            state["buffer"] += message.get("body", b"")
            if more:
                return
            data = rewriter.rewrite_json(state["buffer"])
            start = state["start"]
            await send(
                {**start, "headers": _set_content_length(list(start.get("headers", [])), len(data))}
            )
            await send({"type": "http.response.body", "body": data, "more_body": False})
            state["delivered"] = not receive.disconnected

        await self.app(scope, receive, send_wrapper)
        return state["status"], rewriter, state["delivered"]

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
            data = dumps(openapi_with_pruning(json.loads(data)))
        await send(
            {**start, "headers": _set_content_length(list(start.get("headers", [])), len(data))}
        )
        await send({"type": "http.response.body", "body": data, "more_body": False})
