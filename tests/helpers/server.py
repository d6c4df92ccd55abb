# SPDX-License-Identifier: Apache-2.0
"""Helpers of the server tests: start/stop a real server, build requests, read /metrics."""

from __future__ import annotations

import base64
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

#: The embedded default serves this name.
MODEL = "mipruner-demo"
#: A 112x112 image is 8x8 patches of 14 px, merged 2x2: 16 visual tokens on the tiny Qwen2.5-VL.
IMAGE_SIZE = (112, 112)
N_VISUAL = 16
#: Flags of the server every module shares (tests/server/conftest.py), on the embedded default.
SHARED_SERVER_ARGS: tuple[str, ...] = ("--max-num-seqs", "32")
#: Flags of the one server with custom defaults and the playground on, which the server-defaults
#: and playground-browser modules share (one engine start for both).
CUSTOM_DEFAULTS_ARGS: tuple[str, ...] = (
    "--keep-ratio", "0.5", "--pruning-method", "similarity", "--mi-tau", "0.2",
    "--playground", "--max-num-seqs", "8",
)  # fmt: skip
START_TIMEOUT_S = float(os.environ.get("MIPRUNER_TEST_SERVER_TIMEOUT", "420"))
#: A new connection for every request. A request written to an idle keep-alive connection at the
#: moment the server's keep-alive timer (5 s in vLLM) closes it fails with "Server disconnected
#: without sending a response" (it failed a CI run so). The tests cannot retry instead: a retried
#: request that did reach the server would be counted twice in the metrics they check exactly.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


@dataclass
class Server:
    base_url: str
    log: Path
    process: subprocess.Popen
    ready_after_s: float
    #: MIPRUNER_DEBUG_DIR of the server: its workers log each selection to selections.jsonl there.
    debug_dir: Path | None = None

    @property
    def api(self) -> str:
        return self.base_url + "/v1"

    def log_tail(self, n: int = 80) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def openai_client(server: Server, timeout: float = 120.0) -> Any:
    """The official client for ``server``: no retries, no idle keep-alive connections."""
    openai = pytest.importorskip("openai")
    http_client = openai.DefaultHttpxClient(limits=NO_KEEPALIVE, timeout=timeout)
    return openai.OpenAI(
        base_url=server.api, api_key="unused", max_retries=0, timeout=timeout,
        http_client=http_client,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("mipruner-vllm")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "mipruner_vllm.cli", "serve"]


def start_server(
    tmp_dir: Path,
    extra_args: list[str],
    name: str = "server",
    cache_dir: Path | None = None,
    env_extra: dict[str, str] | None = None,
) -> Server:
    """Start ``mipruner-vllm serve`` on a free loopback port and wait for ``/health``.

    ``cache_dir`` is where the embedded demo checkpoint is built (``MIPRUNER_CACHE_DIR``). The
    server logs its selections to a fresh ``debug_dir``; ``env_extra`` adds environment variables.
    """
    port = free_port()
    log = tmp_dir / f"{name}.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MIPRUNER_") or k == "MIPRUNER_CACHE_DIR"
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the launcher makes a fresh one
    if cache_dir is not None:
        env["MIPRUNER_CACHE_DIR"] = str(cache_dir)
    debug_dir = tmp_dir / f"{name}-selections-{time.monotonic_ns()}"
    debug_dir.mkdir(parents=True)
    env["MIPRUNER_DEBUG_DIR"] = str(debug_dir)
    env.update(env_extra or {})
    cmd = [*serve_command(), "--host", "127.0.0.1", "--port", str(port), *extra_args]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", log, process, 0.0, debug_dir)
    deadline = started + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                server.ready_after_s = time.monotonic() - started
                print(f"\n{name}: ready after {server.ready_after_s:.1f} s ({' '.join(cmd)})")
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(server)
    pytest.fail(f"server not ready after {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    """SIGTERM the whole process group (API server, engine core, workers), then SIGKILL."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


def image_data_url(seed: int = 0, size: tuple[int, int] = IMAGE_SIZE) -> str:
    """A deterministic RGB image as a PNG data URL (no network)."""
    from PIL import Image

    width, height = size
    pixels = bytes(
        (x * 7 + y * 13 + seed * 31 + c * 85) % 256
        for y in range(height)
        for x in range(width)
        for c in range(3)
    )
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def video_data_url(frames: int = 4, side: int = 112, seed: int = 0) -> str:
    """A deterministic ``frames``-frame, 2 fps MP4 as a data URL (written with OpenCV, no
    network)."""
    import tempfile

    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (side, side))
        for _ in range(frames):
            writer.write(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        writer.release()
        data = Path(path).read_bytes()
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def image_messages(question: str = "What is in this picture?", seed: int = 0) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(seed)}},
                {"type": "text", "text": question},
            ],
        }
    ]


def streamed_chat_chunks(client: Any, messages: list[dict], **extra_body: Any) -> list:
    """Every chunk of a streamed, greedy, three-token chat completion through the ``openai``
    ``client`` that asks for the usage in its final chunk; ``extra_body`` carries our fields."""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=3,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra_body,
    )
    return list(stream)


def chat_body(**fields) -> dict:
    """A small valid chat body with an image; ``fields`` are merged at the top level."""
    return {
        "model": MODEL,
        "messages": image_messages(),
        "max_tokens": 2,
        "temperature": 0.0,
        **fields,
    }


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed with prometheus_client's parser: (sample name, sorted labels) ->
    value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=30).text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    """Value of one series (0 if absent, as a counter that never moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (n, lbls), value in samples.items()
        if n == name and all(dict(lbls).get(k) == v for k, v in labels.items())
    )


def selections(server: Server) -> list[dict]:
    """The selections the server's workers logged so far (one JSON object per pruned item)."""
    import json

    path = server.debug_dir / "selections.jsonl" if server.debug_dir else None
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def raw_http(base_url: str, request: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    """Send ``request`` (bytes as they go on the wire) and return (status, body).

    For what an HTTP client library would normalise away: duplicated headers, exact bytes.
    """
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out)


def post_raw(
    base_url: str, path: str, body: bytes, headers: list[tuple[str, str]]
) -> tuple[int, bytes]:
    """``POST path`` with exactly these headers (duplicates kept, in order) and
    ``Connection: close``."""
    host = base_url.removeprefix("http://")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return raw_http(base_url, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


class CountingImageServer:
    """A loopback HTTP server that serves a PNG and counts the requests it got."""

    def __init__(self) -> None:
        png = base64.b64decode(image_data_url().split(",", 1)[1])
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def url_chat_body(url: str) -> dict:
    """A chat body whose one image is the media URL ``url``."""
    return chat_body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ]
    )
