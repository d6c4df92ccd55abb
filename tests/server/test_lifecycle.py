# SPDX-License-Identifier: Apache-2.0
"""The server's life and death: nothing is left behind however it ends (SIGKILL with requests in
flight included, with one and two API-server processes), SIGTERM drains the requests in flight
while new ones and readiness get a 503, a dead engine is a failure status with any number of
API-server processes (which all apply the policy and count exactly), and the media-URL policy's
fetch timeout and private-address switch (own servers)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

import httpx
import psutil
import pytest
from helpers.server import (
    MODEL,
    N_VISUAL,
    CountingImageServer,
    chat_body,
    sample,
    scrape,
    start_server,
    url_chat_body,
)

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


def _server_dirs(processes: list[psutil.Process]) -> list[str]:
    """The metrics directory and the supervisor's state directory of the server."""
    found: dict[str, str] = {}
    for process in processes:
        try:
            environ = process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for name in ("PROMETHEUS_MULTIPROC_DIR", "_MIPRUNER_STATE_DIR"):
            if environ.get(name):
                found.setdefault(name, environ[name])
    assert len(found) == 2, f"server directories not found: {found}"
    return list(found.values())


def _assert_all_gone(
    processes: list[psutil.Process], directories: list[str], timeout: float = 120.0
) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, [(p.pid, p.name()) for p in alive]
    deadline = time.monotonic() + 30
    while any(map(os.path.exists, directories)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [path for path in directories if os.path.exists(path)]
    assert not left, f"directories left behind: {left}"


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
    directories = _server_dirs(processes)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=120) == 0
    _assert_all_gone(processes, directories)


class _Request(threading.Thread):
    """One request on its own connection, recording how it ended (never raising)."""

    def __init__(self, base_url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.base_url, self.body = base_url, body
        self.status: int | None = None
        self.data = b""
        self.error: str | None = None
        self.first_byte = threading.Event()

    def run(self) -> None:
        try:
            # A generous read timeout: a request the server forgot must show up as a timeout
            # (the old failure), distinct from the connection closing.
            with httpx.Client(timeout=httpx.Timeout(10, read=240)) as http:
                with http.stream(
                    "POST", self.base_url + "/v1/chat/completions", json=self.body
                ) as response:
                    self.status = response.status_code
                    for chunk in response.iter_bytes():
                        self.data += chunk
                        self.first_byte.set()
        except httpx.TimeoutException as exc:
            self.error = f"timeout: {exc!r}"
        except httpx.HTTPError as exc:  # the connection closed: what a client should see
            self.error = f"closed: {type(exc).__name__}"
        finally:
            self.first_byte.set()

    @property
    def complete(self) -> bool:
        """A 200 whose body ended properly: a JSON body with usage, or a stream up to [DONE]."""
        if self.status != 200 or self.error is not None:
            return False
        if self.body.get("stream"):
            return self.data.rstrip().endswith(b"data: [DONE]")
        return "usage" in json.loads(self.data)


def _long_requests(base_url: str, max_tokens: int) -> list[_Request]:
    """Two JSON requests and two streams that decode ``max_tokens`` tokens each."""
    requests = [
        _Request(
            base_url,
            chat_body(
                max_tokens=max_tokens,
                ignore_eos=True,
                stream=stream,
                stream_options={"include_usage": True} if stream else None,
                seed=i,
            ),
        )
        for i, stream in enumerate((False, False, True, True))
    ]
    for request in requests:
        request.start()
    return requests


@pytest.mark.parametrize("api_servers", [1, 2])
def test_sigkill_with_requests_in_flight_leaves_nothing_and_closes_connections(fresh, api_servers):
    args = ["--api-server-count", "2"] if api_servers == 2 else []
    server = fresh(*args, name=f"sigkill-{api_servers}")
    processes = _tree(server.process.pid)
    directories = _server_dirs(processes)
    requests = _long_requests(server.base_url, max_tokens=500)
    time.sleep(2)  # the requests are in the server: being processed, queued or decoding
    killed_at = time.monotonic()
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=30)
    # Every process goes (the server bounds its own shutdown once its supervisor is gone), and
    # every client sees its request end: a response, or its connection closing; never a client
    # left waiting on a server that is gone (it used to wait for uvicorn for 120 s and more).
    _assert_all_gone(processes, directories, timeout=60)
    print(f"\nall processes gone {time.monotonic() - killed_at:.1f} s after SIGKILL")
    for request in requests:
        request.join(timeout=60)
        print("client:", request.status, request.error, request.data[-80:])
        assert not request.is_alive() and not (request.error or "").startswith("timeout"), (
            request.status,
            request.error,
            request.data[-200:],
        )


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0(fresh):
    server = fresh("--shutdown-timeout", "120", name="drain")
    processes = _tree(server.process.pid)
    directories = _server_dirs(processes)
    requests = _long_requests(server.base_url, max_tokens=64)
    for request in requests[2:]:  # both streams are decoding
        assert request.first_byte.wait(timeout=240)
    stopped_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        # Readiness fails from the stop on, and a new request is refused with an OpenAI-style
        # 503 (the supervisor marks the stop before it passes the signal on).
        deadline = time.monotonic() + 30
        while http.get("/health").status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http.get("/health").status_code == 503
        refused = http.post("/v1/chat/completions", json=chat_body())
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == 503
        assert refused.headers["connection"] == "close"
        assert http.get("/ping").status_code == 200  # liveness holds during the drain
    for request in requests:
        request.join(timeout=240)
        print("client:", request.status, request.error, request.data[-80:])
    # Every request in flight completed: the drain let them finish (exact usage included).
    for request in requests:
        assert request.complete, (request.status, request.error, request.data[-300:])
    assert server.process.wait(timeout=240) == 0, server.log_tail()
    print(f"exit status 0 {time.monotonic() - stopped_at:.1f} s after SIGTERM")
    _assert_all_gone(processes, directories)


def _api_server_of(connection: http.client.HTTPConnection, api_servers: list[psutil.Process]):
    """The API-server process holding the server side of ``connection``."""
    port = connection.sock.getsockname()[1]
    for process in api_servers:
        if any(c.raddr and c.raddr.port == port for c in process.net_connections("tcp")):
            return process.pid
    return None


def _post(connection: http.client.HTTPConnection, body: dict) -> tuple[int, dict]:
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def _connection_to(server, target: psutil.Process, api_servers: list[psutil.Process]):
    """A keep-alive connection held by the API-server process ``target``.

    vLLM balances new connections to the least loaded API-server process, but on a loaded
    machine the other process may not wake in time; with the others stopped (SIGSTOP) for the
    moment of the accept, only ``target`` can take it.
    """
    host, port = server.base_url.removeprefix("http://").split(":")
    others = [p for p in api_servers if p.pid != target.pid]
    for process in others:
        process.suspend()
    try:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        connection.connect()
        deadline = time.monotonic() + 60
        while _api_server_of(connection, api_servers) != target.pid:
            assert time.monotonic() < deadline, "the API-server process did not take the connection"
            time.sleep(0.1)
    finally:
        for process in others:
            process.resume()
    return connection


def test_two_api_servers_apply_the_policy_count_exactly_and_exit_3_on_engine_death(fresh):
    server = fresh("--api-server-count", "2", name="api-servers-2")
    processes = _tree(server.process.pid)
    directories = _server_dirs(processes)
    api_servers = [p for p in processes if "apiserver" in p.name().lower()]
    assert len(api_servers) == 2, [(p.pid, p.name()) for p in processes]
    connections = [_connection_to(server, target, api_servers) for target in api_servers]
    labels = {"model": MODEL, "method": "mi", "modality": "image"}
    before = scrape(server.base_url)
    try:
        for connection in connections:
            # The request policy runs in this process: a bad field is a 400 naming it...
            status, body = _post(connection, chat_body(keep_ratio=1.5))
            assert status == 400 and body["error"]["param"] == "keep_ratio", body
            status, body = _post(connection, chat_body(keep_ration=0.5))
            assert status == 400, body
            # ...and a good one is pruned, with the outcome in usage.
            status, body = _post(connection, chat_body(keep_ratio=0.5))
            assert status == 200, body
            usage = body["usage"]
            assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (N_VISUAL, 8)
    finally:
        for connection in connections:
            connection.close()
    # Both processes counted their delivered responses into the one metrics directory.
    after = scrape(server.base_url)
    delta = {
        name: sample(after, name, **labels) - sample(before, name, **labels)
        for name in ("mipruner_visual_tokens_total", "mipruner_visual_tokens_kept_total")
    }
    assert delta == {
        "mipruner_visual_tokens_total": 2 * N_VISUAL,
        "mipruner_visual_tokens_kept_total": 2 * 8,
    }
    # The engine dies: whichever API-server process sees it, the exit status says so.
    engine = [p for p in processes if p.name().startswith("VLLM::EngineCore")]
    assert engine, [(p.pid, p.name()) for p in processes]
    engine[0].kill()
    returncode = server.process.wait(timeout=180)
    assert returncode == 3, server.log_tail()  # lifecycle.ENGINE_DIED_STATUS
    _assert_all_gone(processes, directories)


def test_engine_death_is_a_failure_exit_status_and_leaves_nothing(fresh):
    server = fresh(name="engine-death")
    processes = _tree(server.process.pid)
    directories = _server_dirs(processes)
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
    _assert_all_gone(processes, directories)
