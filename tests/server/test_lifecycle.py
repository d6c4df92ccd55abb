# SPDX-License-Identifier: Apache-2.0
"""The server's life and death: nothing is left behind however it ends, a dead engine is a failure
status, and the media-URL policy's fetch timeout and private-address switch (own servers)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import httpx
import psutil
import pytest
from helpers.server import MODEL, CountingImageServer, chat_body, start_server, url_chat_body

pytestmark = [pytest.mark.server, pytest.mark.slow]
OWN_SERVER = True  # conftest orders this module last: it stops the shared server


@pytest.fixture()
def fresh(_pool, tmp_path, demo_cache_dir):
    """``fresh(*args, env=...)``: a server of this test's own (the shared one is stopped first)."""
    _pool.close()
    started = []

    def start(*args, name="lifecycle", env=None):
        server = start_server(
            tmp_path, list(args), name=name, cache_dir=demo_cache_dir, env_extra=env
        )
        started.append((server, _tree(server.process.pid)))
        return server

    yield start
    # Whatever a failed test left running (orphans are no longer in the tree: use the snapshot).
    for server, snapshot in started:
        for process in [*_tree(server.process.pid), *snapshot]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        server.process.wait(timeout=30)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _metrics_dir(processes: list[psutil.Process]) -> str:
    for process in processes:
        try:
            path = process.environ().get("PROMETHEUS_MULTIPROC_DIR")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if path:
            return path
    raise AssertionError("no process of the server has PROMETHEUS_MULTIPROC_DIR")


def _assert_all_gone(
    processes: list[psutil.Process], metrics_dir: str, timeout: float = 120.0
) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, [(p.pid, p.name()) for p in alive]
    deadline = time.monotonic() + 30
    while os.path.exists(metrics_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not os.path.exists(metrics_dir), f"metrics directory left behind: {metrics_dir}"


def _stalled_server() -> tuple[socket.socket, int]:
    """A loopback socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return sock, sock.getsockname()[1]


def test_private_urls_when_allowed_fetch_timeout_and_sigterm_cleanup(fresh):
    server = fresh(
        "--allow-private-media-urls", name="private-urls", env={"VLLM_IMAGE_FETCH_TIMEOUT": "2"}
    )
    images = CountingImageServer()
    stalled, port = _stalled_server()
    try:
        with httpx.Client(base_url=server.base_url, timeout=180) as http:
            # The operator allowed private addresses: a loopback image is fetched and served.
            response = http.post(
                "/v1/chat/completions", json=url_chat_body(f"http://127.0.0.1:{images.port}/a.png")
            )
            assert response.status_code == 200, response.text
            assert images.hits == ["/a.png"]
            # A URL that never answers is given up after the 2 s fetch timeout, retries included
            # (vLLM's own retries would take 2 + 8 + 32 s plus back-off).
            started = time.monotonic()
            response = http.post(
                "/v1/chat/completions", json=url_chat_body(f"http://127.0.0.1:{port}/stall.png")
            )
            elapsed = time.monotonic() - started
            assert 400 <= response.status_code < 600 and response.status_code != 200
            assert elapsed < 12, f"stalled fetch held the request {elapsed:.1f} s"
            assert http.post("/v1/chat/completions", json=chat_body()).status_code == 200
    finally:
        images.close()
        stalled.close()
    processes = _tree(server.process.pid)
    assert len(processes) >= 3  # supervisor, API server, engine core (at least)
    metrics_dir = _metrics_dir(processes)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=120) == 0
    _assert_all_gone(processes, metrics_dir)


def test_sigkill_of_the_launcher_leaves_nothing_behind(fresh):
    server = fresh(name="sigkill")
    processes = _tree(server.process.pid)
    metrics_dir = _metrics_dir(processes)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=30)
    _assert_all_gone(processes, metrics_dir)


def test_engine_death_is_a_failure_exit_status_and_leaves_nothing(fresh):
    server = fresh(name="engine-death")
    processes = _tree(server.process.pid)
    metrics_dir = _metrics_dir(processes)
    supervisor = server.process.pid
    api_servers = {p.pid for p in processes if p.ppid() == supervisor}
    engine = [
        p
        for p in processes
        if p.ppid() in api_servers and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert engine, [(p.pid, p.name(), p.cmdline()[:3]) for p in processes]
    engine[0].kill()  # the engine core dies (as it would of an out-of-memory kill)
    # Requests now fail, and the server shuts down with a failure status, so a restart policy
    # (docker --restart on-failure, systemd Restart=on-failure, Kubernetes) brings it back.
    try:
        httpx.post(
            server.base_url + "/v1/chat/completions",
            json={**chat_body(), "model": MODEL},
            timeout=60,
        )
    except httpx.HTTPError:
        pass
    returncode = server.process.wait(timeout=180)
    assert returncode == 3, server.log_tail()  # launcher.ENGINE_DIED_STATUS
    _assert_all_gone(processes, metrics_dir)
