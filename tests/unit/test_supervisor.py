# SPDX-License-Identifier: Apache-2.0
"""The vLLM-free parts of the server's life: flags, the supervisor's exit status, the markers the
API-server processes share, the 503 while stopping."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from mipruner_vllm.errors import PruningParameterError
from mipruner_vllm.params import resolve_params
from mipruner_vllm.server import lifecycle
from mipruner_vllm.server.flags import PRUNING_FLAGS, add_pruning_args, export_pruning_defaults
from mipruner_vllm.server.supervisor import KILLED_STATUS, _exit_status, shutdown_timeout_s

pytestmark = pytest.mark.unit


@pytest.fixture()
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(lifecycle.STATE_DIR_ENV, str(tmp_path))
    return tmp_path


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "argv,values",
    [
        (["--keep-ratio", "0.5", "--keep-tokens", "3"], {"keep_ratio": 0.5, "keep_tokens": 3}),
        (["--keep-ratio", "1.5"], {"keep_ratio": 1.5}),
        (["--mi-tau", "0"], {"mi_tau": 0.0}),
    ],
)
def test_flag_errors_are_the_parameter_rules_named_by_flag(argv, values):
    """The launcher's refusal is params' own check and wording, with the flag for the name."""
    with pytest.raises(PruningParameterError) as expected:
        resolve_params(**values)
    flag = next(f for f, (name, _, _) in PRUNING_FLAGS.items() if name == expected.value.field)
    with pytest.raises(ValueError) as refused:
        export_pruning_defaults(_parse(*argv))
    assert str(refused.value) == f"{flag}: {expected.value.message}"


def test_server_setting_errors_name_the_flag():
    with pytest.raises(ValueError, match="^--encoder-store-bytes: "):
        export_pruning_defaults(_parse("--encoder-store-bytes", "-5"))


@pytest.mark.parametrize(
    "argv,seconds",
    [([], 0.0), (["--shutdown-timeout", "30"], 30.0), (["--shutdown_timeout=5", "-x"], 5.0)],
)
def test_the_supervisor_reads_vllms_drain_window(argv, seconds):
    assert shutdown_timeout_s(argv) == seconds


@pytest.mark.parametrize(
    "returncode,stop_requested,killed,markers,status",
    [
        (0, True, False, {"serving"}, 0),  # a requested stop, completed
        (3, True, False, {"serving", "died"}, 0),  # vLLM stops its engine first when asked to
        (0, False, False, {"serving", "died"}, 3),  # engine death, one API server: vLLM returns 0
        (1, False, False, {"serving"}, 3),  # several API servers: vLLM's manager raised
        (0, True, True, {"serving"}, KILLED_STATUS),  # the stop overran its grace
        (1, False, False, set(), 1),  # an error at start
        (-9, False, False, set(), 137),  # the server died of SIGKILL before serving
        (2, False, False, set(), 2),  # bad flags
    ],
)
def test_exit_status(state_dir, returncode, stop_requested, killed, markers, status):
    if "serving" in markers:
        lifecycle.note_serving()
    if "died" in markers:
        lifecycle.note_engine_died()
    assert _exit_status(returncode, stop_requested, killed) == status


def test_markers_cross_processes_through_the_state_directory(state_dir, monkeypatch):
    assert not lifecycle.stopping() and not lifecycle.engine_died()
    lifecycle.note_stopping()
    lifecycle.note_engine_died()
    assert lifecycle.stopping() and lifecycle.engine_died()
    assert sorted(p.name for p in state_dir.iterdir()) == ["engine-died", "stopping"]
    # Outside a supervised server (no state directory) nothing is noted and nothing fails.
    monkeypatch.delenv(lifecycle.STATE_DIR_ENV)
    lifecycle.note_stopping()
    assert not lifecycle.stopping()


def _call(scope: dict) -> tuple[bool, list[dict]]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    answered = asyncio.run(lifecycle.refuse_while_stopping(scope, send))
    return answered, sent


def _http(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": []}


def test_while_stopping_new_requests_and_readiness_get_503(state_dir):
    assert _call(_http("POST", "/v1/chat/completions")) == (False, [])
    lifecycle.note_stopping()
    answered, (start, body) = _call(_http("POST", "/v1/chat/completions"))
    assert answered and start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"connection"] == b"close"
    error = json.loads(body["body"])["error"]
    assert (error["code"], error["type"]) == (503, "ServiceUnavailableError")
    assert int(headers[b"content-length"]) == len(body["body"])
    answered, (start, body) = _call(_http("GET", "/health"))
    assert answered and start["status"] == 503 and body["body"] == b""
    # Liveness, metrics and the rest keep answering; lifespan messages pass through.
    for path in ("/ping", "/metrics", "/v1/models"):
        assert _call(_http("GET", path)) == (False, [])
    assert _call({"type": "lifespan"}) == (False, [])
