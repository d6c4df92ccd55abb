# SPDX-License-Identifier: Apache-2.0
"""The media-URL address policy on every connection and redirect hop (no vLLM server needed).

Only loopback HTTP servers exist here, so the policy is narrowed for the test to refuse one
loopback address (127.0.0.2) and allow the other (127.0.0.1): a redirect from the allowed one to
the refused one, and a name that resolves to a refused address, must both be stopped.
"""

from __future__ import annotations

import asyncio
import http.server
import threading

import pytest

from mipruner_vllm.server import media

pytestmark = pytest.mark.server


class _Redirector:
    def __init__(self, host: str, location: str | None) -> None:
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                hits.append(self.path)
                if location:
                    self.send_response(302)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def narrowed_policy(monkeypatch):
    monkeypatch.setattr(media, "_address_refused", lambda address: address.startswith("127.0.0.2"))


async def _fetch(url: str) -> bytes:
    connection = media.GuardedHTTPConnection(reuse_client=False)
    try:
        return await connection.async_get_bytes(url, timeout=5)
    finally:
        if connection._async_client is not None:
            await connection._async_client.close()


def test_address_classification():
    for address in (
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.0.1",
        "169.254.169.254",
        "fe80::1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::ffff:127.0.0.1",
        "fd00::1",
    ):
        assert media._address_refused(address), address
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert not media._address_refused(address), address


def test_redirect_to_a_refused_address_is_not_followed(narrowed_policy):
    target = _Redirector("127.0.0.2", None)
    hop = _Redirector("127.0.0.1", f"http://127.0.0.2:{target.port}/secret")
    try:
        with pytest.raises(media.MediaURLRefused):
            asyncio.run(_fetch(f"http://127.0.0.1:{hop.port}/a.png"))
        assert hop.hits == ["/a.png"] and target.hits == []
        # The same redirect to an allowed address is followed (the policy, not redirects, refused).
        allowed = _Redirector("127.0.0.1", None)
        hop2 = _Redirector("127.0.0.1", f"http://127.0.0.1:{allowed.port}/fine")
        assert asyncio.run(_fetch(f"http://127.0.0.1:{hop2.port}/a.png")) == b"ok"
        allowed.close()
        hop2.close()
    finally:
        hop.close()
        target.close()


def test_a_name_is_checked_on_the_address_it_connects_to(monkeypatch):
    monkeypatch.setattr(media, "_address_refused", lambda address: address in ("127.0.0.1", "::1"))
    server = _Redirector("127.0.0.1", None)
    try:
        with pytest.raises(media.MediaURLRefused):
            asyncio.run(_fetch(f"http://localhost:{server.port}/a.png"))
        assert server.hits == []
    finally:
        server.close()


def test_synchronous_path_checks_every_hop(narrowed_policy):
    target = _Redirector("127.0.0.2", None)
    hop = _Redirector("127.0.0.1", f"http://127.0.0.2:{target.port}/secret")
    try:
        with pytest.raises(media.MediaURLRefused):
            media.GuardedHTTPConnection().get_bytes(f"http://127.0.0.1:{hop.port}/a.png", timeout=5)
        assert target.hits == []
    finally:
        hop.close()
        target.close()
