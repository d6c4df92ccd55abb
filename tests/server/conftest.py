# SPDX-License-Identifier: Apache-2.0
"""Real ``mipruner-vllm serve`` processes for the server tests, one at a time.

An engine start costs 30-80 s on a 2-core CPU, so the embedded-default server is shared by every
module (tests that check metric deltas scrape before and after their own requests, so sharing is
safe: pytest runs tests one at a time). A module that needs other server flags asks
:func:`server_with` for its own; the running server is stopped first (never two engines at once),
and such modules are ordered last so the shared server starts only once.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers.server import (
    NO_KEEPALIVE,
    SHARED_SERVER_ARGS,
    Server,
    openai_client,
    start_server,
    stop_server,
)


class _Pool:
    """At most one running server, keyed by its extra arguments."""

    def __init__(self, tmp_dir: Path, cache_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.cache_dir = cache_dir
        self.key: tuple[str, ...] | None = None
        self.server: Server | None = None

    def get(self, args: tuple[str, ...], name: str) -> Server:
        if self.key != args:
            self.close()
            self.server = start_server(
                self.tmp_dir, list(args), name=name, cache_dir=self.cache_dir
            )
            self.key = args
        assert self.server is not None
        return self.server

    def close(self) -> None:
        if self.server is not None:
            stop_server(self.server)
        self.server, self.key = None, None


@pytest.fixture(scope="session")
def _pool(tmp_path_factory, demo_cache_dir):
    # The embedded default builds its demo checkpoint in the session's shared demo cache
    # (tests/conftest.py), not in the user's ~/.cache.
    pool = _Pool(tmp_path_factory.mktemp("servers"), demo_cache_dir)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def server_with(_pool):
    """``server_with(*args)``: a server started with ``args`` (stopping any other first)."""
    return lambda *args, name="custom": _pool.get(tuple(args), name)


@pytest.fixture()
def server(_pool):
    """``mipruner-vllm serve`` on its embedded default (the tiny Qwen2.5-VL demo checkpoint)."""
    return _pool.get(SHARED_SERVER_ARGS, "default")


@pytest.fixture()
def client(server):
    return openai_client(server)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120, limits=NO_KEEPALIVE) as c:
        yield c


def _server_order(item) -> tuple[int, str]:
    module = getattr(item, "module", None)
    own = getattr(module, "OWN_SERVER", False)
    rank = 0 if own is False else 1 if own == "shared-first" else 2
    return rank, getattr(module, "SERVER_GROUP", "")


def pytest_collection_modifyitems(items):
    # Modules with their own server (OWN_SERVER = True) run after everything that uses the shared
    # one; a module that starts on the shared server and then replaces it (OWN_SERVER =
    # "shared-first") runs first among them, while the shared one still runs; modules that share
    # one custom server (the same SERVER_GROUP and flags) run next to each other, so it starts once.
    # A stable sort keeps the order within each group.
    items.sort(key=_server_order)
