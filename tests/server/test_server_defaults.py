# SPDX-License-Identifier: Apache-2.0
"""Server-wide pruning defaults by flag reach every process; bad flags stop the launcher."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from helpers.server import (
    CUSTOM_DEFAULTS_ARGS,
    MODEL,
    N_VISUAL,
    chat_body,
    sample,
    scrape,
    serve_command,
)

from mipruner_vllm.params import n_keep

pytestmark = pytest.mark.server
OWN_SERVER = True  # conftest orders this module last: it replaces the shared server
SERVER_GROUP = "custom-defaults"  # next to the playground module, on the same server


@pytest.fixture()
def defaults_server(server_with):
    return server_with(*CUSTOM_DEFAULTS_ARGS, name="custom-defaults")


def test_flag_defaults_apply_to_requests_without_fields(defaults_server):
    before = scrape(defaults_server.base_url)
    response = httpx.post(
        defaults_server.base_url + "/v1/chat/completions", json=chat_body(), timeout=120
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (
        N_VISUAL,
        n_keep(N_VISUAL, keep_ratio=0.5),
    )
    after = scrape(defaults_server.base_url)
    labels = {"model": MODEL, "method": "similarity", "modality": "image"}
    assert (
        sample(after, "mipruner_visual_tokens_kept_total", **labels)
        - sample(before, "mipruner_visual_tokens_kept_total", **labels)
        == N_VISUAL // 2
    )


def test_request_fields_override_flag_defaults(defaults_server):
    for fields, kept in (
        ({"keep_ratio": 1.0}, N_VISUAL),
        ({"keep_tokens": 3}, 3),
        ({"pruning_method": "none"}, N_VISUAL),
    ):
        response = httpx.post(
            defaults_server.base_url + "/v1/chat/completions", json=chat_body(**fields), timeout=120
        )
        assert response.status_code == 200, (fields, response.text)
        assert response.json()["usage"]["visual_tokens_kept"] == kept, fields


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--keep-ratio", "1.5"], "--keep-ratio: must be a number in (0, 1], got 1.5"),
        (["--pruning-method", "magic"], "--pruning-method: must be one of mi,"),
        (
            ["--keep-ratio", "0.5", "--keep-tokens", "4"],
            "--keep-tokens: give either keep_ratio or keep_tokens, not both",
        ),
        (["--mi-tau", "abc"], "--mi-tau: invalid float value"),
    ],
)
def test_bad_default_flag_stops_the_launcher_naming_it(args, expected):
    # Refused before vLLM is imported or any engine starts: an exit in about a second.
    result = subprocess.run([*serve_command(), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
