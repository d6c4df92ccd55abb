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

* schemes: ``http``, ``https`` and ``data`` only; ``file`` only where the operator set vLLM's
  ``--allowed-local-media-path`` (vLLM then checks the path);
* errors: every failure that is the client's doing (a refused URL, a host that does not resolve,
  a remote error, a size limit, bytes that do not decode, Pillow's decompression-bomb limit) is
  raised as :class:`MediaRefused`, a vLLM validation error: HTTP 400 naming where the request
  carries the item (``messages[0].content[1].image_url``, from :func:`request_media`) and why.
  vLLM would answer most of these with a 500 (an unexpected exception) or a 422 whose message
  hides the reason ("Invalid URL"); the server's own failures (out of memory, a missing
  library, anything else) are left to vLLM, a 5xx.

Allowed domains stay vLLM's ``--allowed-media-domains``; ``data:`` URLs are never fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urljoin

import aiohttp
import requests
from urllib3.util import parse_url
from vllm.connections import HTTPConnection
from vllm.exceptions import VLLMClientError, VLLMValidationError
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
    """A media URL the policy refuses (raised to vLLM as a :class:`MediaRefused`, an HTTP 400)."""


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


def _legacy_ipv4(host: str) -> str | None:
    """The dotted address of a host written in a legacy IPv4 form (``127.1``), else None."""
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def check_host(host: str | None, *, resolve: bool = True) -> None:
    """Refuse ``host`` if it is, or (``resolve``) resolves to, a non-public address, or if it is
    an IPv4 address in a legacy form (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``:
    what ``inet_aton`` reads as an address, and the HTTP client refuses as a URL)."""
    if not host:
        raise MediaURLRefused("media URL has no host")
    bare = host.strip("[]")
    legacy = None if _is_ip_literal(bare) else _legacy_ipv4(bare)
    if _is_ip_literal(bare):
        addresses = [bare]
    elif legacy is not None:
        addresses = [legacy]
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
    if legacy is not None:
        raise MediaURLRefused(
            f"media URL host {host!r} is an IPv4 address in a non-canonical form; write it as "
            f"{legacy}"
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


#: Where each media URL of the request being served sits in its body (``url -> path`` such as
#: ``messages[0].content[1].image_url``), set by the middleware so a refusal names the path.
_REQUEST_MEDIA: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "mipruner_request_media", default=None
)


@contextlib.contextmanager
def request_media(paths: Mapping[str, str]) -> Iterator[None]:
    """Name the media URLs of the request handled in this context (for :class:`MediaRefused`)."""
    token = _REQUEST_MEDIA.set(paths)
    try:
        yield
    finally:
        _REQUEST_MEDIA.reset(token)


class MediaRefused(MiprunerError, VLLMValidationError):
    """A media item the client is responsible for (a refused URL, bytes that do not decode):
    vLLM answers its validation errors with an HTTP 400 whose ``param`` is :attr:`parameter`."""

    def __str__(self) -> str:  # the message alone, not vLLM's "(parameter=..., value=...)"
        return str(self.args[0])


class _Undecodable(MiprunerError, ValueError):
    """The media bytes (downloaded or inline) do not decode."""


class _CheckedMediaIO:
    """A modality's ``MediaIO`` whose decoding failures are marked as the client's.

    Whatever the decoder raises on the client's bytes (not an image, a truncated file, Pillow's
    decompression-bomb limit, a video no backend opens) comes from the bytes; only a missing
    library or exhausted memory is the server's.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load_bytes(self, data: bytes) -> Any:
        return self._decode(self._inner.load_bytes, data)

    def load_base64(self, media_type: str, data: str) -> Any:
        return self._decode(self._inner.load_base64, media_type, data)

    def load_file(self, filepath: Any) -> Any:
        return self._decode(self._inner.load_file, filepath)

    def _decode(self, load: Any, *args: Any) -> Any:
        try:
            return load(*args)
        except (MemoryError, ImportError):
            raise
        except Exception as exc:
            raise _Undecodable(f"the {_modality(self._inner)} cannot be decoded: {exc}") from exc


def _modality(media_io: Any) -> str:
    name = type(media_io).__name__.lower()
    return next((m for m in ("image", "video", "audio") if name.startswith(m)), "media")


#: Socket errors that say the server is out of resources, whatever URL it was fetching.
_SERVER_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def _client_reason(exc: BaseException) -> str | None:
    """Why a failed media load is the client's doing, or None when it is the server's."""
    if isinstance(exc, VLLMClientError) and exc.__cause__ is not None:
        # vLLM's fetch-error conversion hides the reason (our refusal, say) behind "Invalid URL".
        reason = _client_reason(exc.__cause__)
        if reason is not None:
            return reason
    if isinstance(exc, MediaURLRefused | _Undecodable):
        return str(exc)
    if getattr(getattr(exc, "os_error", exc), "errno", None) in _SERVER_ERRNOS:
        return None  # out of file descriptors or memory: the server's state, not the URL
    if isinstance(exc, aiohttp.InvalidURL):
        return f"not a valid URL ({exc})"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, socket.gaierror):
        return f"media URL host {exc.host!r} does not resolve ({exc.os_error.strerror})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"the media URL answered HTTP {exc.status}"
    if isinstance(exc, VLLMClientError):
        return str(exc.args[0]) if exc.args else type(exc).__name__
    if isinstance(exc, aiohttp.ClientError | requests.RequestException | OSError):
        return f"fetching the media URL failed: {exc or type(exc).__name__}"
    if isinstance(exc, ValueError | NotImplementedError):  # vLLM's URL and data-URL checks
        return str(exc)
    return None


def _refusal(url: str, media_io: Any, reason: str) -> MediaRefused:
    where = (_REQUEST_MEDIA.get() or {}).get(url) or f"{_modality(media_io)}_url"
    return MediaRefused(f"Invalid request field '{where}': {reason}", parameter=where)


@contextlib.contextmanager
def _refusing_client_failures(url: str, media_io: Any) -> Iterator[None]:
    """Raise a failure that is the client's doing, in loading ``url``, as a :class:`MediaRefused`;
    let the server's own failures (and refusals already made) through unchanged."""
    try:
        yield
    except MediaRefused:
        raise
    except Exception as exc:
        if (reason := _client_reason(exc)) is None:
            raise
        raise _refusal(url, media_io, reason) from exc


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class GuardedMediaConnector(MediaConnector):
    """vLLM's media connector with the URL policy, a whole-fetch deadline, and every failure that
    is the client's doing raised as a :class:`MediaRefused` (HTTP 400 naming the path)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not get_settings().allow_private_media_urls:
            kwargs.setdefault("connection", _guarded_connection)
        super().__init__(*args, **kwargs)

    def _check_url(self, url: str) -> None:
        if url[:5].lower() == "data:":
            return
        try:
            spec = parse_url(url)
        except ValueError as exc:
            raise MediaURLRefused(f"not a valid URL ({exc})") from None
        scheme = (spec.scheme or "").lower()
        if scheme == "file":
            if self.allowed_local_media_path is None:
                raise MediaURLRefused(
                    "file URLs are not accepted on this server (an operator can allow one "
                    "directory with vLLM's --allowed-local-media-path)"
                )
            return  # vLLM checks the path against that directory
        if scheme not in ("http", "https"):
            raise MediaURLRefused(
                f"URL scheme {scheme or 'none'!r} is not accepted; use http(s) or a base64 data URL"
            )
        if not get_settings().allow_private_media_urls:
            check_host(spec.host, resolve=False)  # names: the resolver checks what is connected to

    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        with _refusing_client_failures(url, media_io):
            self._check_url(url)
            return super().load_from_url(
                url, _CheckedMediaIO(media_io), fetch_timeout=fetch_timeout
            )

    async def load_from_url_async(
        self, url: str, media_io: Any, *, fetch_timeout: int | None = None
    ) -> Any:
        with _refusing_client_failures(url, media_io):
            self._check_url(url)
            return await self._load_within_deadline(url, _CheckedMediaIO(media_io), fetch_timeout)

    async def _load_within_deadline(
        self, url: str, media_io: Any, fetch_timeout: int | None
    ) -> Any:
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
