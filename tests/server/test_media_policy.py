# SPDX-License-Identifier: Apache-2.0
"""The media-URL address policy on every connection and redirect hop (no vLLM server needed).

Only loopback HTTP servers exist here, so the policy is narrowed for the test to refuse one
loopback address (127.0.0.2) and allow the other (127.0.0.1): a redirect from the allowed one to
the refused one, and a name that resolves to a refused address, must both be stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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


# -- which media failures are the client's (a 400) and which the server's --------------------------


class _MediaIO:
    """A stand-in for a modality's MediaIO: ``fail`` is what its decoder raises."""

    def __init__(self, fail: BaseException | None = None, max_bytes: int | None = None) -> None:
        self.fail = fail
        self.max_bytes = max_bytes

    def get_max_bytes(self) -> int | None:
        return self.max_bytes

    def load_bytes(self, data: bytes) -> bytes:
        if self.fail is not None:
            raise self.fail
        return data

    def load_base64(self, media_type: str, data: str) -> bytes:
        return self.load_bytes(data.encode())


class _BrokenConnection:
    """An HTTP connection that fails the way a server-side fault would."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or RuntimeError("the server's own fault")

    async def async_get_bytes(self, *args, **kwargs) -> bytes:
        raise self.error


def _load(connector, url: str, media_io) -> object:
    return asyncio.run(connector.load_from_url_async(url, media_io, fetch_timeout=5))


def test_bytes_that_do_not_decode_are_the_clients_and_named_by_path():
    url = "data:image/png;base64,AAAA"
    connector = media.GuardedMediaConnector()
    for fail in (SyntaxError("broken PNG chunk"), OSError("truncated"), RuntimeError("no frames")):
        with pytest.raises(media.MediaRefused) as err:
            _load(connector, url, _MediaIO(fail))
        assert err.value.parameter == "media_url" and "cannot be decoded" in str(err.value)

    async def named() -> None:
        with media.request_media({url: "messages[0].content[1].image_url"}):
            await connector.load_from_url_async(url, _MediaIO(ValueError("bad")), fetch_timeout=5)

    with pytest.raises(media.MediaRefused) as err:
        asyncio.run(named())
    assert err.value.parameter == "messages[0].content[1].image_url"


def test_the_servers_own_failures_are_not_refusals():
    connector = media.GuardedMediaConnector()
    with pytest.raises(MemoryError):
        _load(connector, "data:image/png;base64,AAAA", _MediaIO(MemoryError()))
    broken = media.GuardedMediaConnector(connection=_BrokenConnection())
    with pytest.raises(RuntimeError, match="the server's own fault"):
        _load(broken, "http://8.8.8.8/a.png", _MediaIO())
    out_of_files = media.GuardedMediaConnector(
        connection=_BrokenConnection(OSError(errno.EMFILE, "Too many open files"))
    )
    with pytest.raises(OSError, match="Too many open files"):
        _load(out_of_files, "http://8.8.8.8/a.png", _MediaIO())


def test_a_download_over_the_size_limit_is_the_clients(narrowed_policy):
    big = _Sized(3 * 1024 * 1024)
    connection = media.GuardedHTTPConnection(reuse_client=False)

    async def load() -> object:
        connector = media.GuardedMediaConnector(connection=connection)
        try:
            return await connector.load_from_url_async(
                f"http://127.0.0.1:{big.port}/big.png", _MediaIO(max_bytes=1 << 20), fetch_timeout=5
            )
        finally:
            if connection._async_client is not None:
                await connection._async_client.close()

    try:
        with pytest.raises(media.MediaRefused) as err:
            asyncio.run(load())
        assert "maximum size of 1048576 bytes" in str(err.value), str(err.value)
    finally:
        big.close()


class _Sized(_Redirector):
    """A loopback server answering ``size`` bytes."""

    def __init__(self, size: int) -> None:
        payload = b"\0" * size

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # the client stops at its limit
                    self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.hits = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_legacy_ipv4_forms_are_refused_naming_the_host():
    for host in ("127.1", "2130706433", "0x7f000001", "0177.0.0.1"):
        with pytest.raises(media.MediaURLRefused, match=f"'{host}' is a loopback"):
            media.check_host(host, resolve=False)
    with pytest.raises(media.MediaURLRefused, match="write it as 8.8.8.8"):
        media.check_host("0x08080808", resolve=False)
