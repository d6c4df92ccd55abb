# SPDX-License-Identifier: Apache-2.0
"""A hostile client against a real server: every request either gets a 400 naming the field or is
served within the server's policy, and the engine keeps serving (docs/security.md).

Raw HTTP (httpx with hand-written bodies, or raw sockets) where a client library would normalise
the request away: duplicated headers, huge integers, deep JSON, closing a connection early.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from helpers.server import (
    MODEL,
    N_VISUAL,
    CountingImageServer,
    chat_body,
    image_data_url,
    image_messages,
    post_raw,
    sample,
    scrape,
    selections,
    total,
    url_chat_body,
)

pytestmark = pytest.mark.server

IMAGE = {"model": MODEL, "modality": "image"}


def _assert_400(response_or_pair, param: str, text: str | None = None) -> dict:
    if isinstance(response_or_pair, tuple):
        status, body = response_or_pair
    else:
        status, body = response_or_pair.status_code, response_or_pair.content
    assert status == 400, body[:2000]
    error = json.loads(body)["error"]
    assert error["param"] == param, error
    assert param in error["message"]
    if text is not None:
        assert text in error["message"], error["message"]
    return error


def _fresh_messages(tag: str, seed: int = 0) -> list[dict]:
    # A question never asked before: no cache can answer it, so the worker selects again.
    return image_messages(f"Question {tag} {time.time_ns()}?", seed=seed)


def _post_text(http, path: str, text: str):
    return http.post(path, content=text.encode(), headers={"content-type": "application/json"})


# -- 1. the seed and other integers the worker could not take ------------------------------------


@pytest.mark.parametrize("seed", [2**64, 2**64 - 1, 2**63, 10**400])
def test_seed_beyond_the_generator_is_400_and_the_engine_lives(http, seed):
    body = (
        json.dumps(chat_body(pruning_method="random", keep_ratio=0.5))[:-1]
        + f', "pruning_seed": {seed}}}'
    )
    _assert_400(
        _post_text(http, "/v1/chat/completions", body), "pruning_seed", "9223372036854775807"
    )
    ok = http.post("/v1/chat/completions", json=chat_body(keep_ratio=0.5))
    assert ok.status_code == 200, ok.text


def test_keep_tokens_beyond_any_item_is_400_naming_it(http):
    body = json.dumps(chat_body())[:-1] + ', "keep_tokens": 1' + "0" * 400 + "}"
    _assert_400(_post_text(http, "/v1/chat/completions", body), "keep_tokens", "integer >= 1")


def test_large_seeds_are_carried_exactly(server, http):
    seeds = [2**60, 2**60 + 1, 2**60 + 7, 2**63 - 1]
    kept = {}
    for seed in seeds:
        before = len(selections(server))
        response = http.post(
            "/v1/chat/completions",
            json=chat_body(
                messages=_fresh_messages(f"seed {seed}"),
                pruning_method="random",
                keep_ratio=0.5,
                pruning_seed=seed,
            ),
        )
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["visual_tokens_kept"] == N_VISUAL // 2
        logged = selections(server)[before:]
        assert len(logged) == 1, logged
        assert logged[0]["params"]["pruning_seed"] == seed  # not rounded to a float64
        kept[seed] = tuple(logged[0]["kept"])
    # Seeds that a float64 would merge (2**60, 2**60+1, 2**60+7 are one double) select differently.
    assert len({kept[s] for s in seeds}) == len(seeds), kept


# -- 2. the allow-list reads the request as vLLM does ---------------------------------------------


def _bodies_with_processor_kwargs() -> dict[str, dict]:
    kwargs = {"mm_processor_kwargs": {"max_pixels": 1_000_000}}
    image = image_data_url()
    return {
        "/v1/chat/completions": chat_body(**kwargs),
        "/tokenize": {"model": MODEL, "messages": image_messages(), **kwargs},
        "/v1/responses": {
            "model": MODEL,
            "max_output_tokens": 2,
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": image},
                        {"type": "input_text", "text": "What is it?"},
                    ],
                }
            ],
            **kwargs,
        },
        "/v1/chat/completions/batch": {
            "model": MODEL,
            "max_tokens": 2,
            "messages": [image_messages()],
            **kwargs,
        },
        "/invocations": chat_body(**kwargs),
    }


@pytest.mark.parametrize("path", list(_bodies_with_processor_kwargs()))
@pytest.mark.parametrize("order", ["json-first", "text-first"])
def test_duplicated_content_type_does_not_skip_the_allow_list(server, path, order):
    body = json.dumps(_bodies_with_processor_kwargs()[path]).encode()
    types = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
    if order == "text-first":
        types.reverse()
    status, response = post_raw(server.base_url, path, body, types)
    if order == "json-first":
        # What vLLM reads (the first header) is JSON: the allow-list answers.
        _assert_400(
            (status, response),
            "mm_processor_kwargs.max_pixels",
            "not an allowed processor argument",
        )
    else:
        # vLLM refuses a text/plain body itself, or the allow-list does; never served with
        # max_pixels.
        assert status in (400, 415, 422), response[:500]


def test_media_io_kwargs_are_refused_by_default(http):
    for path, body in (
        ("/v1/chat/completions", chat_body(media_io_kwargs={"video": {"fps": 100}})),
        (
            "/tokenize",
            {
                "model": MODEL,
                "messages": image_messages(),
                "media_io_kwargs": {"image": {"image_mode": "L"}},
            },
        ),
    ):
        key = next(iter(body["media_io_kwargs"]))
        option = next(iter(body["media_io_kwargs"][key]))
        _assert_400(
            http.post(path, json=body),
            f"media_io_kwargs.{key}.{option}",
            "--allowed-media-io-kwargs",
        )


# -- 4. client media uuids -------------------------------------------------------------------------


def _uuid_body(image_url: dict | None, uuid: str | None, question: str) -> dict:
    """A chat body of one user message: an image part carrying ``uuid``, then ``question``."""
    part = {"type": "image_url", "image_url": image_url, "uuid": uuid}
    content = [part, {"type": "text", "text": question}]
    return chat_body(messages=[{"role": "user", "content": content}])


def test_client_media_uuid_is_refused_saying_why(http):
    image = {"url": image_data_url(seed=3)}
    with_image = _uuid_body(image, "tenant-a-image", "What is this?")
    error = _assert_400(
        http.post("/v1/chat/completions", json=with_image), "messages[0].content[0].uuid"
    )
    assert "another client" in error["message"] and "--trust-media-uuids" in error["message"]
    uuid_only = _uuid_body(None, "tenant-a-image", "And this?")
    _assert_400(http.post("/v1/chat/completions", json=uuid_only), "messages[0].content[0].uuid")
    # A null uuid is no uuid: served (the server hashes the pixels).
    plain = _uuid_body(image, None, "What is this?")
    assert http.post("/v1/chat/completions", json=plain).status_code == 200


# -- 5. media URLs ---------------------------------------------------------------------------------


@pytest.fixture()
def local_image_server():
    server = CountingImageServer()
    yield server
    server.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.0.0.1"])
def test_private_and_loopback_media_urls_are_not_fetched(http, local_image_server, host):
    started = time.monotonic()
    response = http.post(
        "/v1/chat/completions", json=url_chat_body(f"http://{host}:{local_image_server.port}/a.png")
    )
    assert 400 <= response.status_code < 500, response.text
    assert local_image_server.hits == []
    assert time.monotonic() - started < 30  # refused, not attempted until some timeout


# -- 6. metrics count what reached the client ------------------------------------------------------


def _idle(base_url: str, timeout: float = 120.0) -> None:
    """Wait until vLLM runs no request (its own gauge), so a finished-or-aborted request is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = scrape(base_url)
        if (
            total(samples, "vllm:num_requests_running") == 0
            and total(samples, "vllm:num_requests_waiting") == 0
        ):
            return
        time.sleep(0.5)
    raise AssertionError("vLLM still busy")


def test_stream_closed_early_is_not_counted(server):
    _idle(server.base_url)
    before = scrape(server.base_url)
    body = chat_body(
        messages=_fresh_messages("stream"),
        keep_ratio=0.25,
        max_tokens=400,
        stream=True,
        stream_options={"include_usage": True},
        ignore_eos=True,
    )
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_bytes())  # the first chunk arrived; the client goes away
    time.sleep(1)
    _idle(server.base_url)
    after = scrape(server.base_url)
    assert total(after, "mipruner_visual_tokens_total") == total(
        before, "mipruner_visual_tokens_total"
    )


def test_abandoned_request_is_not_counted(server):
    _idle(server.base_url)
    before = scrape(server.base_url)
    body = json.dumps(
        chat_body(
            messages=_fresh_messages("abandoned"), keep_ratio=0.25, max_tokens=2000, ignore_eos=True
        )
    ).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        # The client goes away while the request runs: no byte of the answer within 1 s (a
        # non-streamed answer is sent whole, so a byte here means it finished or failed first).
        sock.settimeout(1.0)
        try:
            early = sock.recv(1)
        except TimeoutError:
            early = b""
        assert not early, "the request ended before the client left; make it longer"
    time.sleep(1)
    _idle(server.base_url)
    after = scrape(server.base_url)
    assert total(after, "mipruner_visual_tokens_total") == total(
        before, "mipruner_visual_tokens_total"
    )


# -- 7. the smaller items ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["Keep_Ratio", "KEEP_RATIO", "keepRatio", "keep-ratio", "KeepRatio"]
)
def test_pruning_field_lookalikes_are_400_naming_the_field_to_use(http, key):
    error = _assert_400(http.post("/v1/chat/completions", json=chat_body(**{key: 0.5})), key)
    assert "'keep_ratio'" in error["message"]


def test_top_level_mipruner_key_is_400(http):
    error = _assert_400(
        http.post("/v1/chat/completions", json=chat_body(mipruner={"keep_ratio": 0.5})), "mipruner"
    )
    assert "keep_ratio" in error["message"]


def test_deep_json_is_400_not_500(http):
    depth = 50_000
    body = json.dumps(chat_body())[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}"
    _assert_400(_post_text(http, "/v1/chat/completions", body), "body", "nested deeper")
    assert http.get("/health").status_code == 200


def test_item_kept_whole_is_labelled_none(server, http):
    before = scrape(server.base_url)
    response = http.post(
        "/v1/chat/completions", json=chat_body(keep_tokens=1000, pruning_method="similarity")
    )
    assert response.status_code == 200
    assert response.json()["usage"]["visual_tokens_kept"] == N_VISUAL
    after = scrape(server.base_url)

    def delta(**labels):
        return sample(after, "mipruner_visual_tokens_total", **labels) - sample(
            before, "mipruner_visual_tokens_total", **labels
        )

    assert delta(method="none", **IMAGE) == N_VISUAL
    assert delta(method="similarity", **IMAGE) == 0


def _kept_delta(before, after) -> float:
    return total(after, "mipruner_visual_tokens_kept_total", method="mi") - total(
        before, "mipruner_visual_tokens_kept_total", method="mi"
    )


def test_chat_batch_gets_usage_and_metrics(server, http):
    before = scrape(server.base_url)
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "keep_ratio": 0.25,
        "messages": [_fresh_messages("batch a"), _fresh_messages("batch b", seed=1)],
    }
    response = http.post("/v1/chat/completions/batch", json=body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (
        2 * N_VISUAL,
        2 * (N_VISUAL // 4),
    )
    assert _kept_delta(before, scrape(server.base_url)) == 2 * (N_VISUAL // 4)


def test_invocations_gets_usage_and_metrics(server, http):
    before = scrape(server.base_url)
    response = http.post(
        "/invocations", json=chat_body(messages=_fresh_messages("invocations"), keep_ratio=0.5)
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["visual_tokens_kept"] == N_VISUAL // 2
    assert _kept_delta(before, scrape(server.base_url)) == N_VISUAL // 2


def _responses_body(**extra) -> dict:
    return {
        "model": MODEL,
        "max_output_tokens": 16,
        "keep_ratio": 0.5,
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": image_data_url(seed=5)},
                    {"type": "input_text", "text": f"Responses {time.time_ns()}?"},
                ],
            }
        ],
        **extra,
    }


def test_responses_gets_usage_and_metrics(server, http):
    before = scrape(server.base_url)
    response = http.post("/v1/responses", json=_responses_body())
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (N_VISUAL, N_VISUAL // 2)
    assert _kept_delta(before, scrape(server.base_url)) == N_VISUAL // 2


def test_responses_stream_gets_usage_in_its_final_event(server, http):
    before = scrape(server.base_url)
    with http.stream("POST", "/v1/responses", json=_responses_body(stream=True)) as response:
        assert response.status_code == 200
        text = b"".join(response.iter_bytes()).decode()
    finals = [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and '"response.completed"' in line
    ]
    assert len(finals) == 1, text[-2000:]
    usage = finals[0]["response"]["usage"]
    assert (usage["visual_tokens"], usage["visual_tokens_kept"]) == (N_VISUAL, N_VISUAL // 2)
    assert _kept_delta(before, scrape(server.base_url)) == N_VISUAL // 2
