# SPDX-License-Identifier: Apache-2.0
"""The places where the server layer reads vLLM's API-server internals, kept in one file.

Every name is declared in :mod:`mipruner_vllm.integration.vllm_surface` and checked at load:

* :func:`pruning_enabled` reads the served architecture from ``app.state.vllm_config``
  (set by ``init_app_state``);
* :func:`ensure_outcome_context` makes the renderer's multimodal-processing thread see the
  request's :mod:`contextvars`, so :func:`mipruner_vllm.outcome.record_item`, called by the
  processor, reaches the outcome collected for that request;
* :func:`bound_http_shutdown` (lifespan startup) gives uvicorn's shutdown a limit
  (``app.state.server``, set by vLLM's ``serve_http``), and :func:`note_engine_death` (lifespan
  shutdown) reads ``EngineClient.errored``: the two ends of the server's life
  (:mod:`.lifecycle`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from typing import Any

from mipruner_vllm.integration.vllm_surface import apply_patch
from mipruner_vllm.server import lifecycle

logger = logging.getLogger(__name__)

_ARCH_PREFIX = "MIPruner"


def served_architectures(app: Any) -> list[str]:
    """Architectures of the served model after ``--hf-overrides`` (empty if unknown)."""
    config = getattr(getattr(app, "state", None), "vllm_config", None)
    if config is None:
        return []
    return list(getattr(config.model_config, "architectures", None) or [])


def pruning_enabled(app: Any) -> bool:
    """True when the served model runs one of the plugin's pruning architectures."""
    return any(arch.startswith(_ARCH_PREFIX) for arch in served_architectures(app))


def ensure_outcome_context(app: Any) -> None:
    """Run the renderer's multimodal processing in a copy of the caller's context (idempotent).

    Why: vLLM 0.32 runs ``BaseRenderer._process_multimodal`` (which calls the processor) through
    ``make_async`` = ``loop.run_in_executor`` on a single-thread executor, and
    ``run_in_executor`` does not carry :mod:`contextvars` into the thread (unlike
    ``asyncio.to_thread``). Without this, ``record_item`` in the processor sees no collector and
    ``usage`` would report 0 visual tokens. The replacement is the same call on the same
    executor (same ordering and thread), wrapped in ``contextvars.copy_context().run``; the copy
    shares the request's :class:`~mipruner_vllm.outcome.RequestOutcome` object, so the items
    recorded in the thread are visible to the request. One copy per call, so concurrent requests
    never share a context.
    """
    engine_client = getattr(getattr(app, "state", None), "engine_client", None)
    renderer = getattr(engine_client, "renderer", None)
    if renderer is None:
        return
    process = renderer._process_multimodal
    executor = renderer._mm_executor

    async def process_multimodal_async(*args: Any, **kwargs: Any) -> Any:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            executor, functools.partial(context.run, process, *args, **kwargs)
        )

    # Declared, logged, idempotent and undoable: mipruner_vllm.integration.vllm_surface.
    apply_patch("BaseRenderer._process_multimodal_async", renderer, process_multimodal_async)


def bound_http_shutdown(app: Any) -> None:
    """Limit how long uvicorn waits for open connections at shutdown (its default: forever).

    Called at lifespan startup, when vLLM's ``serve_http`` has built the uvicorn server
    (``app.state.server``) and before it can stop. Why: vLLM stops HTTP only after it has stopped
    its engine client (the engine drained for ``--shutdown-timeout`` seconds by then, and the
    client's output handler is cancelled), so a request still open at that point is never
    answered, and uvicorn would wait for its client to give up. uvicorn reads
    ``timeout_graceful_shutdown`` when it shuts down: past it, it cancels the requests still open
    and the clients see their connections close.
    """
    server = getattr(getattr(app, "state", None), "server", None)
    config = getattr(server, "config", None)
    if config is not None:
        config.timeout_graceful_shutdown = lifecycle.HTTP_CLOSE_GRACE_S
    lifecycle.note_serving()


def note_engine_death(app: Any) -> None:
    """At lifespan shutdown: if vLLM's engine died, say so to the supervisor (exit status 3).

    vLLM's ``EngineClient.errored`` is True once the engine core died; whichever API-server
    process sees it writes the marker, so the status is right with any ``--api-server-count``.
    """
    engine_client = getattr(getattr(app, "state", None), "engine_client", None)
    if getattr(engine_client, "errored", False):
        lifecycle.note_engine_died()
        logger.error("mipruner: vLLM's engine died; the server exits with a non-zero status")
