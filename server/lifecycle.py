# SPDX-License-Identifier: Apache-2.0
"""What the supervisor and every API-server process tell each other about stopping and dying.

vLLM may run several API-server processes (``--api-server-count``), each a child of the server
process, which is a child of the supervisor (:mod:`.supervisor`). A flag in one process's memory
reaches none of the others, so the two facts that cross process lines are marker files in a
directory the supervisor makes and names in :data:`STATE_DIR_ENV` (inherited by every process):

* ``stopping``: written by the supervisor when it is asked to stop, before it passes the signal
  on; from then on every API-server process refuses new requests with a 503 and fails ``/health``
  (readiness), while the requests in flight drain (``--shutdown-timeout``);
* ``serving``: written by every API-server process when its HTTP server has started;
* ``engine-died``: written by whichever API-server process sees vLLM's engine client errored at
  shutdown (with one API-server process, the one that owns the engine client always does).

The supervisor exits with :data:`ENGINE_DIED_STATUS` when the server stopped without being asked
and either marker says it failed while serving: ``engine-died``, or ``serving`` and a failure
status. The second case is how engine death shows with ``--api-server-count`` > 1: there the
API-server processes' engine clients do not watch the engine (vLLM 0.32 gives that watch to the
process that started the engine), and that process reports the death as an error of its process
manager (exit status 1).

No vLLM import: the supervisor uses this module too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: The supervisor's state directory (marker files), inherited by every process it starts.
STATE_DIR_ENV = "_MIPRUNER_STATE_DIR"
#: Exit status when vLLM's engine died while serving (distinct from Python's 1 for an uncaught
#: exception, say at start-up); see the module docstring for how it is told apart.
ENGINE_DIED_STATUS = 3
#: Seconds uvicorn keeps open connections once it stops (see :func:`..hooks.bound_http_shutdown`).
HTTP_CLOSE_GRACE_S = 3.0

_STOPPING = "stopping"
_SERVING = "serving"
_ENGINE_DIED = "engine-died"


def _marker(name: str) -> Path | None:
    directory = os.environ.get(STATE_DIR_ENV)
    return Path(directory) / name if directory else None


def _note(name: str) -> None:
    path = _marker(name)
    if path is not None:
        try:
            path.touch()
        except OSError:  # the supervisor is gone and took its directory with it
            pass


def _noted(name: str) -> bool:
    path = _marker(name)
    return path is not None and path.exists()


def note_stopping() -> None:
    """The server was asked to stop: refuse new requests, fail readiness, drain the rest."""
    _note(_STOPPING)


def stopping() -> bool:
    return _noted(_STOPPING)


def note_serving() -> None:
    """An API-server process has started serving (a later failure is a failure while serving)."""
    _note(_SERVING)


def serving() -> bool:
    return _noted(_SERVING)


def failed_while_serving(returncode: int) -> bool:
    """Whether a server that stopped unasked died of its engine (see the module docstring)."""
    return engine_died() or (serving() and returncode != 0)


def note_engine_died() -> None:
    """vLLM's engine died: the supervisor exits with :data:`ENGINE_DIED_STATUS`."""
    _note(_ENGINE_DIED)


def engine_died() -> bool:
    return _noted(_ENGINE_DIED)


#: ``GET`` paths that fail while stopping: readiness (``/ping`` stays the liveness answer).
_READINESS_PATHS = frozenset({"/health"})


async def refuse_while_stopping(scope: Any, send: Any) -> bool:
    """ASGI: answer 503 to a new request or a readiness probe while the server stops.

    Returns True when it answered. New ``POST`` requests (any route) get an OpenAI-style error
    body and ``Connection: close``, so a keep-alive client reconnects (through its load balancer,
    to a replica that is not stopping); ``GET /health`` gets a bare 503, so readiness fails and
    the replica leaves its Service. The requests already in flight are not affected.
    """
    if scope["type"] != "http" or not stopping():
        return False
    if scope["method"] == "GET" and scope["path"] in _READINESS_PATHS:
        body = b""
    elif scope["method"] == "POST":
        from mipruner_vllm.server.protocol import ErrorInfo, ErrorResponse

        error = ErrorInfo(
            message="The server is shutting down; retry on another replica.",
            type="ServiceUnavailableError",
            param=None,
            code=503,
        )
        body = ErrorResponse(error=error).model_dump_json().encode()
    else:
        return False
    headers = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return True
