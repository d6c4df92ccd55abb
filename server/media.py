# SPDX-License-Identifier: Apache-2.0
"""The media-URL policy of a shared server: a media connector registered with vLLM.

vLLM fetches ``http(s)`` media URLs server-side. On an endpoint shared by many clients that is a
server-side request forgery surface: a client could make the server fetch
``http://127.0.0.1:.../`` or a cloud metadata address, or hold a request open with a URL that
never answers. vLLM offers a registry for the component that fetches media
(``MEDIA_CONNECTOR_REGISTRY``, chosen by ``VLLM_MEDIA_CONNECTOR``); the launcher selects this
one, :class:`GuardedMediaConnector`, which adds to vLLM's own connector:

* addresses: unless ``allow_private_media_urls`` is set, a URL whose host is, or resolves to,
  a loopback, link-local, private, shared, reserved or multicast address is refused. The check
  runs on the addresses the HTTP client really connects to (a resolver that filters them), so a
  name that resolves differently the second time gains nothing, and on every redirect hop;
* time: the fetch timeout vLLM configures (``VLLM_IMAGE_FETCH_TIMEOUT``,
  ``VLLM_VIDEO_FETCH_TIMEOUT``, ``VLLM_AUDIO_FETCH_TIMEOUT``) bounds the whole fetch, retries
  included (vLLM retries a stalled fetch with a growing per-attempt timeout, 5 s becoming 27 s;
  the launcher also sets ``VLLM_MEDIA_FETCH_MAX_RETRIES=1`` unless the operator chose a value,
  so a client's URL is tried once).

Allowed domains stay vLLM's ``--allowed-media-domains``; ``data:`` URLs are untouched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urljoin

import aiohttp
from urllib3.util import parse_url
from vllm.connections import HTTPConnection
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector

from mipruner_vllm.config import get_settings
from mipruner_vllm.errors import MiprunerError

logger = logging.getLogger(__name__)

#: The name the launcher puts in ``VLLM_MEDIA_CONNECTOR``.
CONNECTOR_NAME = "mipruner"
MAX_REDIRECTS = 10
#: The whole fetch may run this long past the fetch timeout (the last attempt's own timeout).
DEADLINE_SLACK_S = 0.5


class MediaURLRefused(MiprunerError, ValueError):
    """A media URL the policy refuses (vLLM answers a ``ValueError`` in media loading with a
    400)."""


def _address_refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_host(host: str | None, *, resolve: bool = True) -> None:
    """Refuse ``host`` if it is, or (``resolve``) resolves to, a non-public address."""
    if not host:
        raise MediaURLRefused("media URL has no host")
    bare = host.strip("[]")
    if _is_ip_literal(bare):
        addresses = [bare]
    elif not resolve:
        return
    else:
        try:
            addresses = [
                info[4][0] for info in socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM)
            ]
        except OSError as exc:
            raise MediaURLRefused(f"media URL host {host!r} does not resolve ({exc})") from None
    refused = [a for a in addresses if _address_refused(a)]
    if refused:
        raise MediaURLRefused(
            f"media URL host {host!r} is a loopback, link-local, private or otherwise non-public "
            f"address ({refused[0]}); this server fetches only public addresses (an operator can "
            "allow others with --allow-private-media-urls)"
        )


class _PublicOnlyResolver(aiohttp.abc.AbstractResolver):
    """aiohttp resolver that drops the connection when a name resolves to a refused address."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if _address_refused(result["host"]):
                raise MediaURLRefused(
                    f"media URL host {host!r} resolves to a non-public address "
                    f"({result['host']}); this server fetches only public addresses "
                    "(--allow-private-media-urls allows others)"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()


async def _check_redirect(
    session: Any, context: Any, params: aiohttp.TraceRequestRedirectParams
) -> None:
    # Names are checked by the resolver when the hop connects; an address literal never reaches
    # a resolver, so it is checked here, before aiohttp follows the Location header.
    location = params.response.headers.get("Location") or params.response.headers.get("URI")
    if location:
        check_host(parse_url(urljoin(str(params.url), location)).host, resolve=False)


class GuardedHTTPConnection(HTTPConnection):
    """vLLM's HTTP helper with the address policy on every connection and redirect hop."""

    async def get_async_client(self) -> aiohttp.ClientSession:
        if self._async_client is None or not self.reuse_client:
            trace = aiohttp.TraceConfig()
            trace.on_request_redirect.append(_check_redirect)
            self._async_client = aiohttp.ClientSession(
                trust_env=True,
                connector=aiohttp.TCPConnector(resolver=_PublicOnlyResolver()),
                trace_configs=[trace],
            )
        return self._async_client

    def get_response(
        self,
        url: str,
        *,
        stream: bool = False,
        timeout: float | None = None,
        extra_headers: Any = None,
        allow_redirects: bool = True,
    ) -> Any:
        # The synchronous path (offline use): redirects followed here, each hop checked. A name is
        # resolved for the check and again by the HTTP client, so this path is best effort.
        for _ in range(MAX_REDIRECTS + 1):
            check_host(parse_url(url).host)
            response = super().get_response(
                url,
                stream=stream,
                timeout=timeout,
                extra_headers=extra_headers,
                allow_redirects=False,
            )
            if not (allow_redirects and response.is_redirect):
                return response
            url = urljoin(url, response.headers["Location"])
            response.close()
        raise MediaURLRefused(f"media URL redirected more than {MAX_REDIRECTS} times")


_guarded_connection = GuardedHTTPConnection()


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class GuardedMediaConnector(MediaConnector):
    """vLLM's media connector with the address policy and a whole-fetch deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not get_settings().allow_private_media_urls:
            kwargs.setdefault("connection", _guarded_connection)
        super().__init__(*args, **kwargs)

    def _check_url(self, url: str) -> None:
        if url[:5].lower() == "data:" or get_settings().allow_private_media_urls:
            return
        spec = parse_url(url)
        if spec.scheme and spec.scheme.startswith("http"):
            check_host(spec.host, resolve=False)  # names: the resolver checks what is connected to

    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        self._check_url(url)
        return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)

    async def load_from_url_async(
        self, url: str, media_io: Any, *, fetch_timeout: int | None = None
    ) -> Any:
        self._check_url(url)
        fetch = super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
        if fetch_timeout is None or url[:5].lower() == "data:":
            return await fetch
        # Not asyncio.wait_for: it waits for the cancelled fetch to finish, and a cancellation that
        # lands as aiohttp's own timeout fires is turned into a TimeoutError, which vLLM's retry
        # loop retries. asyncio.wait answers at the deadline whatever the fetch does with it.
        task = asyncio.ensure_future(fetch)
        done, _ = await asyncio.wait({task}, timeout=fetch_timeout + DEADLINE_SLACK_S)
        too_slow = MediaURLRefused(
            f"fetching the media URL took longer than the server's {fetch_timeout} s fetch timeout"
        )
        if task not in done:
            task.cancel()
            task.add_done_callback(_retrieve_exception)
            raise too_slow
        try:
            return task.result()
        except TimeoutError:  # the last attempt's own timeout: the client's URL, a 400 not a 500
            raise too_slow from None


def _retrieve_exception(task: asyncio.Future) -> None:
    # A fetch abandoned at its deadline: consume its outcome so asyncio does not log it.
    if not task.cancelled():
        task.exception()
