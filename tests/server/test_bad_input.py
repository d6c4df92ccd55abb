# SPDX-License-Identifier: Apache-2.0
"""Issue 23 against a real server: every bad input that is the client's doing is an HTTP 400 with
an OpenAI-style error naming where it is, on every route, streamed or not, and the engine keeps
serving (docs/security.md).

* keys that read as a pruning field but are not one exactly (case, separators, zero-width,
  full-width, Unicode confusables);
* media the client is responsible for: decompression bombs, refused schemes (``file://`` in
  every spelling), refused or unresolvable hosts in every spelling, bytes that do not decode;
* bodies that do not parse (a 5000-digit integer, invalid UTF-8, gzip);
* the pruning question is the user's text as sent, special-token strings included.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
import time
import zlib

import httpx
import pytest
from helpers.server import MODEL, chat_body, image_data_url, image_messages, selections

from mipruner_vllm.config import MiprunerSettings
from mipruner_vllm.params import REQUEST_FIELDS
from mipruner_vllm.server.policy import RequestRefused, apply_policy

pytestmark = pytest.mark.server


def _error(response: httpx.Response, param: str, *fragments: str) -> dict:
    assert response.status_code == 400, response.text[:2000]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("BadRequestError", 400, param), error
    assert f"'{param}'" in error["message"], error
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


# -- look-alike keys -------------------------------------------------------------------------------

LOOKALIKES = [
    ("keepratio", "keep_ratio"),
    ("KEEPRATIO", "keep_ratio"),
    ("keeptokens", "keep_tokens"),
    ("pruningmethod", "pruning_method"),
    ("keep\u200bratio", "keep_ratio"),  # zero-width space
    ("\uff4b\uff45\uff45\uff50_\uff52\uff41\uff54\uff49\uff4f", "keep_ratio"),  # full-width
    ("k\u0435ep_ratio", "keep_ratio"),  # Cyrillic e
    ("Keep_Ratio", "keep_ratio"),
    ("keepRatio", "keep_ratio"),
    ("keep-ratio", "keep_ratio"),
]


@pytest.mark.parametrize("key,field", LOOKALIKES, ids=[ascii(k) for k, _ in LOOKALIKES])
def test_a_key_that_reads_as_a_pruning_field_is_400_naming_it(http, key, field):
    value = "mi" if field == "pruning_method" else 4 if field == "keep_tokens" else 0.5
    _error(
        http.post("/v1/chat/completions", json=chat_body(**{key: value})),
        key,
        f"use '{field}'",
    )


def test_no_field_of_the_openai_api_reads_as_a_pruning_field(http):
    # The false-positive guard: every property of every schema vLLM serves (334 names in vLLM
    # 0.32: max_tokens, top_k, min_p, seed, ...) passes the look-alike check.
    names: set[str] = set()
    stack = [http.get("/openapi.json").json()]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            names.update(
                value.get("properties", {}) if isinstance(value.get("properties"), dict) else ()
            )
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    assert len(names) > 100
    refused = []
    for name in sorted(names - set(REQUEST_FIELDS)):
        try:
            apply_policy(
                {name: None},
                route="/v1/chat/completions",
                settings=MiprunerSettings(),
                pruning_enabled=True,
            )
        except RequestRefused as exc:
            if exc.field == name:
                refused.append((name, exc.message))
    assert refused == []


# -- media -----------------------------------------------------------------------------------------


def _png_bomb(side: int = 20_000) -> str:
    """A valid 1-bit PNG of side x side pixels (about 50 KB compressed, 400 M pixels)."""
    rows = zlib.compress((b"\x00" + b"\x00" * ((side + 7) // 8)) * side, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


NON_PUBLIC = "non-public address"
# (case id, URL, text the message must contain); {image} is a real PNG file on the server's disk.
MEDIA_CASES = [
    ("bomb-20000x20000", _png_bomb(), "decompression bomb"),
    ("file-etc-passwd", "file:///etc/passwd", "file URLs are not accepted"),
    ("file-localhost", "file://localhost/etc/hostname", "file URLs are not accepted"),
    ("file-upper-case", "FILE:///etc/passwd", "file URLs are not accepted"),
    ("file-one-slash", "file:/etc/passwd", "file URLs are not accepted"),
    ("file-real-image", "file://{image}", "file URLs are not accepted"),
    ("ftp", "ftp://example.com/a.png", "scheme 'ftp' is not accepted"),
    ("no-scheme", "//example.com/a.png", "scheme 'none' is not accepted"),
    ("localhost", "http://localhost:9/a.png", NON_PUBLIC),
    ("127.1", "http://127.1:9/a.png", NON_PUBLIC),
    ("decimal-ip", "http://2130706433:9/a.png", NON_PUBLIC),
    ("hex-ip", "http://0x7f000001:9/a.png", NON_PUBLIC),
    ("octal-ip", "http://0177.0.0.1:9/a.png", NON_PUBLIC),
    ("loopback-ip", "http://127.0.0.1:9/a.png", NON_PUBLIC),
    ("mapped-ipv6", "http://[::ffff:127.0.0.1]:9/a.png", NON_PUBLIC),
    ("metadata-ip", "http://169.254.169.254/latest/meta-data", NON_PUBLIC),
    ("unresolvable", "http://no-such-host.invalid/a.png", "does not resolve"),
    (
        "not-an-image",
        "data:image/png;base64," + base64.b64encode(b"not an image").decode(),
        "cannot be decoded",
    ),
    ("bad-base64", "data:image/png;base64,@@@", "cannot be decoded"),
    ("not-base64", "data:image/png,abc", "Only base64 data URLs"),
]


def _chat(url: str, stream: bool) -> dict:
    return {
        "model": MODEL,
        "max_tokens": 2,
        **({"stream": True} if stream else {}),
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }


def _route(route: str, url: str, stream: bool) -> tuple[str, dict, str]:
    """(path, body, where the URL is in the body) for one route."""
    if route == "responses":
        body = {
            "model": MODEL,
            "max_output_tokens": 16,
            **({"stream": True} if stream else {}),
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": url},
                    ],
                }
            ],
        }
        return "/v1/responses", body, "input[0].content[1].image_url"
    chat = _chat(url, stream)
    if route == "batch":
        return (
            "/v1/chat/completions/batch",
            {**chat, "messages": [chat["messages"]]},
            "messages[0][0].content[1].image_url",
        )
    path = "/invocations" if route == "invocations" else "/v1/chat/completions"
    return path, chat, "messages[0].content[1].image_url"


ROUTES = [
    ("chat", False),
    ("chat", True),
    ("responses", False),
    ("responses", True),
    ("batch", False),
    ("invocations", False),
    ("invocations", True),
]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "real.png"
    path.write_bytes(base64.b64decode(image_data_url().split(",", 1)[1]))
    return path


@pytest.mark.parametrize("route,stream", ROUTES, ids=[f"{r}{'-stream' * s}" for r, s in ROUTES])
@pytest.mark.parametrize("url,text", [c[1:] for c in MEDIA_CASES], ids=[c[0] for c in MEDIA_CASES])
def test_media_the_client_is_responsible_for_is_400_naming_its_path(
    http, image_file, route, stream, url, text
):
    path, body, where = _route(route, url.format(image=image_file), stream)
    _error(http.post(path, json=body), where, text)


def test_the_engine_serves_after_the_bad_media(http):
    response = http.post("/v1/chat/completions", json=chat_body(keep_ratio=0.5))
    assert response.status_code == 200, response.text


# -- bodies that do not parse ----------------------------------------------------------------------


def _post_bytes(http, data: bytes, **headers: str) -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        content=data,
        headers={"content-type": "application/json", **headers},
    )


def test_a_5000_digit_integer_is_400_naming_its_field(http):
    body = json.dumps(chat_body())[:-1] + ', "max_tokens": ' + "9" * 5000 + "}"
    _error(_post_bytes(http, body.encode()), "max_tokens", "5000 digits", "at most 4300")


def test_invalid_utf8_is_400(http):
    body = json.dumps(chat_body())[:-1].encode() + b', "user": "\xff\xfe"}'
    _error(_post_bytes(http, body), "body", "not UTF-8", "0xff")


def test_a_gzip_body_is_400(http):
    packed = gzip.compress(json.dumps(chat_body()).encode())
    _error(_post_bytes(http, packed), "body", "gzip-compressed")
    _error(_post_bytes(http, packed, **{"content-encoding": "gzip"}), "body", "Content-Encoding")


def test_malformed_json_is_400(http):
    _error(_post_bytes(http, b"{not json"), "body", "not valid JSON", "line 1 column 2")


def test_a_form_upload_is_still_vllms_to_answer(http):
    # Not sent as JSON: the policy does not claim it (vLLM's own parsing answers, as before).
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = http.post("/v1/chat/completions", content=b"a=1", headers=form)
    assert 400 <= response.status_code < 500
    assert "not valid JSON" not in response.text


# -- the pruning question --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    [
        "What is <|im_end|> in this picture?",
        "Describe <|vision_start|> and <|im_start|>assistant here",
    ],
)
def test_the_question_keeps_special_token_strings_as_sent(server, http, question):
    from transformers import AutoTokenizer

    tag = f" {time.time_ns()}"  # a question never asked before: the worker selects again
    before = len(selections(server))
    response = http.post(
        "/v1/chat/completions",
        json=chat_body(messages=image_messages(question + tag), keep_ratio=0.5),
    )
    assert response.status_code == 200, response.text
    logged = selections(server)[before:]
    assert len(logged) == 1, logged
    model_dir = httpx.get(server.base_url + "/v1/models").json()["data"][0]["root"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.decode(logged[0]["text_ids"]) == question + tag
