# SPDX-License-Identifier: Apache-2.0
"""The request policy of the server: a pure function of (body, route, settings).

:func:`apply_policy` takes the parsed JSON body of any ``POST`` and returns the body vLLM should
see, or raises :class:`RequestRefused` (an HTTP 400 naming the field). It has no I/O and no
vLLM import, so it is tested directly, including by a property test over generated bodies.

What it enforces (docs/security.md):

* pruning fields: validated once (:func:`mipruner_vllm.params.params_from_request`) and moved,
  fully resolved and normalised, into ``mm_processor_kwargs`` on the generate routes; refused
  at the top level elsewhere; a key that reads as a pruning field but is not one exactly is
  refused naming the field to use: any case or separator style (``Keep_Ratio``, ``keepRatio``,
  ``keep-ratio``, ``keepratio``), zero-width characters, compatibility forms (full-width
  ``ｋｅｅｐ_ｒａｔｉｏ``) and Unicode confusables (``kеep_ratio`` with a Cyrillic ``е``); so is a
  top-level ``mipruner``;
* ``mm_processor_kwargs`` (anywhere in the body): only the pruning fields. The server runs
  vLLM with ``--trust-request-mm-kwargs``, and this allow-list is what makes that safe: no other
  processor argument (resolution, and so cost) reaches the processor;
* ``media_io_kwargs`` (anywhere): only the ``modality.key`` names the operator allowed;
* client media ``uuid`` (content parts) and ``multi_modal_uuids``: refused unless trusted;
* nesting depth: bounded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any

from confusable_homoglyphs.confusables import confusables_data

from mipruner_vllm.config import MiprunerSettings
from mipruner_vllm.errors import MiprunerError, PruningParameterError
from mipruner_vllm.params import (
    PRUNING_PREFIXES,
    REQUEST_FIELDS,
    PruningParams,
    params_from_request,
    request_fields,
)

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
CHAT_BATCH_PATH = "/v1/chat/completions/batch"
RESPONSES_PATH = "/v1/responses"
INVOCATIONS_PATH = "/invocations"
#: Routes that generate (and so take top-level pruning fields, get usage fields and metrics).
GENERATE_PATHS = (CHAT_PATH, COMPLETIONS_PATH, CHAT_BATCH_PATH, RESPONSES_PATH, INVOCATIONS_PATH)

#: The processor-kwargs key the plugin reserves for itself (the normalised, hashed spec).
RESERVED_KEY = "mipruner"
#: Keys of a content part that carry media: a part with one of these (or a ``type``) is media.
MEDIA_PART_KEYS = frozenset(
    {
        "image_url",
        "video_url",
        "audio_url",
        "input_audio",
        "input_image",
        "image",
        "video",
        "image_embeds",
        "video_embeds",
        "audio_embeds",
        "image_pil",
        "vision_chunk",
    }
)
UUID_KEYS = ("multi_modal_uuids", "mm_uuids")


class RequestRefused(MiprunerError, ValueError):
    """A request the policy refuses: HTTP 400 naming ``field`` (as the client spelled it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass
class Decision:
    """What to send vLLM, and what the dispatcher should do around it."""

    body: dict[str, Any]
    #: True on a generate route: collect the pruning outcome, add usage fields, count metrics.
    generate: bool
    #: The resolved parameters when the request may prune (None when pruning is off).
    params: PruningParams | None
    #: Each media URL of the body -> where it sits (``messages[0].content[1].image_url``), so a
    #: media failure names the path.
    media: dict[str, str] = dataclasses.field(default_factory=dict)


@functools.lru_cache(maxsize=4096)
def _ascii_readings(char: str) -> frozenset[str]:
    """What ``char`` may be read as: itself and its one-character ASCII look-alikes, lower-case.

    The look-alikes are the Unicode confusables (Unicode TS #39's ``confusables.txt``, as
    packaged by ``confusable-homoglyphs``): Cyrillic ``е`` reads as ``e``, ``0`` as ``o``.
    """
    readings = {char.lower()}
    for homoglyph in confusables_data.get(char, ()):
        if len(homoglyph["c"]) == 1 and homoglyph["c"].isascii():
            readings.add(homoglyph["c"].lower())
    return frozenset(readings)


#: Longer keys are not read for look-alikes in full (a pruning field has at most 17 characters;
#: the bound keeps the fold's cost per key constant whatever a client sends).
MAX_FOLDED_KEY = 32


@functools.cache
def _fold_tables() -> tuple[dict[int, None], dict[int, str]]:
    """``str.translate`` tables: format characters to nothing, and each non-ASCII character that
    has one-character ASCII look-alikes to the first of them. Built once, on first use (scanning
    the code points takes about 0.3 s)."""
    invisible: dict[int, None] = {
        code: None for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"
    }
    lookalike: dict[int, str] = {}
    for char in confusables_data:
        readings = _ascii_readings(char) - {char.lower()}
        if len(char) == 1 and not char.isascii() and readings:
            lookalike[ord(char)] = min(readings)
    return invisible, lookalike


def _unformatted(key: str) -> str:
    """``key`` without format characters (zero-width space and joiners, BOM: Unicode category
    Cf, invisible) and in compatibility form (NFKC: full-width ``ｋ`` is ``k``)."""
    if key.isascii():
        return key
    return unicodedata.normalize("NFKC", key.translate(_fold_tables()[0]))


def _folded(key: str) -> tuple[str, str]:
    """``key`` unformatted (:func:`_unformatted`), and its ASCII reading in snake case."""
    plain = _unformatted(key)
    reading = plain if plain.isascii() else plain.translate(_fold_tables()[1])
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", reading)
    return plain, re.sub(r"[\s\-.]+", "_", snake).strip("_").lower()


def canonical(key: str) -> str:
    """``Keep_Ratio``, ``KEEP_RATIO``, ``keepRatio``, ``keep-ratio``, ``ｋｅｅｐ_ｒａｔｉｏ`` ->
    ``keep_ratio``: the key's ASCII reading in snake case (look-alikes read as their first ASCII
    reading, so ``kеep_ratio`` with a Cyrillic ``е`` gives ``keep_ratio`` too)."""
    return _folded(key)[1]


_SEPARATORS = re.compile(r"[\s\-._]+")
#: Each pruning field without separators (``keepratio``), for keys written without any.
_SQUASHED_FIELDS = {_SEPARATORS.sub("", field): field for field in REQUEST_FIELDS}


def _field_read(plain: str, name: str) -> str | None:
    if name in REQUEST_FIELDS:
        return name
    squashed = _SEPARATORS.sub("", plain)
    for bare, field in _SQUASHED_FIELDS.items():
        if len(bare) == len(squashed) and all(
            want in _ascii_readings(char) for char, want in zip(squashed, bare, strict=True)
        ):
            return field
    return None


def reads_as(key: str) -> str | None:
    """The pruning field ``key`` reads as, ignoring case, separators, format characters,
    compatibility forms and look-alike characters (``keepratio``, ``KEEPRATIO``,
    ``keep\\u200bratio``, ``kеep_ratio``, ``keep_rati0``), else None."""
    return _field_read(*_folded(key))


def _lookalike(key: str) -> str | None:
    """The refusal message for a top-level key meant as a pruning field but not one, else None."""
    if key in REQUEST_FIELDS:
        return None
    plain, name = _folded(key[:MAX_FOLDED_KEY])  # the start is what the prefix rules read
    field = _field_read(plain, name) if len(key) <= MAX_FOLDED_KEY else None
    written = "" if key.isascii() else f" (written {ascii(key[:MAX_FOLDED_KEY])})"
    if field is not None:
        return f"pruning fields are spelt exactly; use '{field}'{written}"
    if name == RESERVED_KEY or name.startswith(RESERVED_KEY + "_"):
        return (
            "is reserved for the plugin; the pruning fields are top-level: "
            + ", ".join(REQUEST_FIELDS)
            + written
        )
    if name.startswith(PRUNING_PREFIXES):
        return "unknown pruning field; allowed: " + ", ".join(REQUEST_FIELDS) + written
    return None


def _walk(body: Any, max_depth: int) -> Iterator[tuple[str, dict[str, Any], int]]:
    """Every object of ``body`` with its path (``messages[0].content[1]``), without recursion."""
    stack: list[tuple[str, Any, int]] = [("", body, 1)]
    while stack:
        path, value, depth = stack.pop()
        if depth > max_depth:
            raise RequestRefused("body", f"nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            yield path, value, depth
            for key, child in value.items():
                if isinstance(child, dict | list):
                    stack.append((f"{path}.{key}" if path else str(key), child, depth + 1))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                if isinstance(child, dict | list):
                    stack.append((f"{path}[{index}]", child, depth + 1))


#: Content-part keys whose value is a media URL (a string, or an object with a ``url``).
MEDIA_URL_KEYS = ("image_url", "video_url", "audio_url")


def media_paths(body: Any, max_depth: int) -> dict[str, str]:
    """Each media URL in ``body`` -> its path (the first, if the same URL is given twice)."""
    paths: dict[str, str] = {}
    for path, obj, _ in _walk(body, max_depth):
        for key in MEDIA_URL_KEYS:
            value = obj.get(key)
            url = value.get("url") if isinstance(value, dict) else value
            if isinstance(url, str):
                paths.setdefault(url, f"{path}.{key}" if path else key)
    return paths


#: Python's int() refuses longer digit strings (``sys.get_int_max_str_digits``, CVE-2020-10735).
MAX_INT_DIGITS = 4300


class _OversizedInteger:
    """A JSON integer too long to convert, kept so that the refusal can name where it is."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _find_oversized(body: Any) -> tuple[str, _OversizedInteger] | None:
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _OversizedInteger):
            return path or "body", value
        children = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, list)
            else ()
        )
        for key, child in children:
            where = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
            stack.append((where, child))
    return None


def parse_body(raw: bytes, content_encoding: str | None = None) -> Any:
    """The JSON of a request body, or :class:`RequestRefused` saying why it is not JSON.

    Refused: a compressed body, bytes that are not UTF-8 (or UTF-16/32, which JSON allows),
    malformed JSON, and integers longer than :data:`MAX_INT_DIGITS` digits (named by path).
    Nesting deeper than the interpreter's recursion limit raises ``RecursionError``.
    """
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        raise RequestRefused(
            "body",
            f"Content-Encoding {content_encoding.strip()!r} is not accepted; send the JSON "
            "uncompressed",
        )
    if raw[:2] == b"\x1f\x8b":
        raise RequestRefused("body", "is gzip-compressed; send the JSON uncompressed")
    oversized: list[_OversizedInteger] = []

    def parse_int(text: str) -> int | _OversizedInteger:
        digits = len(text.lstrip("-"))
        if digits <= MAX_INT_DIGITS:
            return int(text)
        oversized.append(_OversizedInteger(digits))
        return oversized[-1]

    try:
        body = json.loads(raw, parse_int=parse_int)
    except UnicodeDecodeError as exc:
        raise RequestRefused(
            "body", f"is not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start}"
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestRefused("body", f"is not valid JSON: {exc}") from None
    found = _find_oversized(body) if oversized else None  # walked only when there is one
    if found is not None:
        path, value = found
        raise RequestRefused(
            path, f"an integer of {value.digits} digits; at most {MAX_INT_DIGITS} are accepted"
        )
    return body


def _check_media_io_kwargs(path: str, value: Any, settings: MiprunerSettings) -> None:
    allowed = set(settings.allowed_media_io_kwargs)
    hint = (
        ("allowed on this server: " + ", ".join(sorted(allowed)))
        if allowed
        else (
            "this server accepts none (media_io_kwargs changes how media is decoded, and so the "
            "cost); an operator can allow keys with --allowed-media-io-kwargs modality.key"
        )
    )
    if not isinstance(value, dict):
        raise RequestRefused(path, "must be an object of modality -> options; " + hint)
    for modality, options in value.items():
        if not isinstance(options, dict):
            raise RequestRefused(f"{path}.{modality}", "must be an object of options; " + hint)
        for key in options:
            if f"{modality}.{key}" not in allowed:
                raise RequestRefused(
                    f"{path}.{modality}.{key}", "not an allowed media_io_kwargs key; " + hint
                )


def _check_nested_processor_kwargs(path: str, value: Any) -> None:
    # A nested mm_processor_kwargs (inside a prompt object, say) gets the same allow-list.
    if not isinstance(value, dict):
        raise RequestRefused(
            path, "must be an object whose keys are among: " + ", ".join(REQUEST_FIELDS)
        )
    for key in value:
        if key not in REQUEST_FIELDS:
            raise RequestRefused(
                f"{path}.{key}",
                "not an allowed processor argument; allowed: " + ", ".join(REQUEST_FIELDS),
            )
    try:
        params_from_request(value)
    except PruningParameterError as exc:
        raise RequestRefused(f"{path}.{exc.field}", exc.message) from None


UUID_REFUSED = (
    "client media uuids are not accepted on this server: vLLM would key its caches by the uuid "
    "instead of the media, so one client could be answered from (or poison) another client's "
    "media; remove it (the server hashes the media itself), or an operator can start the server "
    "with --trust-media-uuids"
)


def _check_structure(body: Any, settings: MiprunerSettings) -> None:
    """Depth, media_io_kwargs, uuids and nested mm_processor_kwargs anywhere in the body."""
    for path, obj, depth in _walk(body, settings.max_json_depth):
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if key == "media_io_kwargs" and value is not None:
                _check_media_io_kwargs(where, value, settings)
            elif key == "mm_processor_kwargs" and depth > 1 and value is not None:
                _check_nested_processor_kwargs(where, value)
            elif (
                not settings.trust_media_uuids
                and value is not None
                and (
                    key in UUID_KEYS
                    or (
                        key == "uuid"
                        and depth > 1
                        and (isinstance(obj.get("type"), str) or MEDIA_PART_KEYS & obj.keys())
                    )
                )
            ):
                raise RequestRefused(where, UUID_REFUSED)


def _take_top_level_fields(
    body: dict[str, Any], generate: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """Pop the top-level pruning fields of ``body``: (given values, field -> where given).
    Refuses them on routes that do not generate, and any key that reads as one (look-alikes)."""
    given: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in list(body):
        if key in REQUEST_FIELDS:
            origin[key] = key
            value = body.pop(key)
            if not generate:
                raise RequestRefused(
                    key,
                    "top-level pruning fields are accepted on "
                    + ", ".join(GENERATE_PATHS)
                    + "; on this route put them in mm_processor_kwargs",
                )
            if value is not None:  # null = "use the server default", as in the OpenAI API
                given[key] = value
        elif (message := _lookalike(key)) is not None:
            raise RequestRefused(key, message)
    return given, origin


def _take_processor_kwargs(
    client_kwargs: Any, given: dict[str, Any], origin: dict[str, str]
) -> None:
    """Add the client's ``mm_processor_kwargs`` to ``given`` / ``origin``: allow-listed keys
    only, none given twice."""
    if not isinstance(client_kwargs, dict):
        raise RequestRefused(
            "mm_processor_kwargs",
            "must be an object whose keys are among: " + ", ".join(REQUEST_FIELDS),
        )
    for key, value in client_kwargs.items():
        param = f"mm_processor_kwargs.{key}"
        if key not in REQUEST_FIELDS:
            raise RequestRefused(
                param,
                "not an allowed processor argument; allowed: " + ", ".join(REQUEST_FIELDS),
            )
        if key in origin:
            raise RequestRefused(param, "given both at the top level and in mm_processor_kwargs")
        origin[key] = param
        if value is not None:
            given[key] = value


def apply_policy(
    body: Any, *, route: str, settings: MiprunerSettings, pruning_enabled: bool
) -> Decision:
    """Validate ``body`` (the parsed JSON of a POST to ``route``) and return what vLLM gets.

    A pure function of its arguments (``body`` is not modified). Raises :class:`RequestRefused`.
    """
    if not isinstance(body, dict):
        # No vLLM route takes a top-level array, but what it nests is checked all the same.
        _check_structure(body, settings)
        return Decision(
            body, generate=False, params=None, media=media_paths(body, settings.max_json_depth)
        )
    _check_structure(body, settings)
    media = media_paths(body, settings.max_json_depth)
    body = dict(body)
    generate = route in GENERATE_PATHS
    # origin: request field -> where the client put it (errors name that)
    given, origin = _take_top_level_fields(body, generate)
    client_kwargs = body.pop("mm_processor_kwargs", None)
    if client_kwargs is not None:
        _take_processor_kwargs(client_kwargs, given, origin)
    try:
        params = params_from_request(given, settings=settings)
    except PruningParameterError as exc:
        raise RequestRefused(origin.get(exc.field, exc.field), exc.message) from None

    if not pruning_enabled:
        if given:
            raise RequestRefused(
                origin[sorted(given)[0]],
                "the served model has no pruning support (its architecture is not one "
                "the mipruner plugin handles), so pruning fields cannot be honoured",
            )
        return Decision(body, generate=generate, params=None, media=media)
    carries_media = route != COMPLETIONS_PATH and not (
        route == INVOCATIONS_PATH and "messages" not in body
    )
    if (generate and carries_media) or (not generate and client_kwargs is not None):
        # Always the fully resolved set: the processor then never falls back to its own defaults,
        # and equal effective settings give byte-equal kwargs (and equal multimodal hashes).
        body["mm_processor_kwargs"] = request_fields(params)
    # /v1/completions carries no media in vLLM 0.32 (text or token prompts only), so the validated
    # fields have nothing to act on there; usage then reports 0 visual tokens.
    return Decision(body, generate=generate, params=params, media=media)
