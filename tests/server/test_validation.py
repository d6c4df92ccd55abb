# SPDX-License-Identifier: Apache-2.0
"""Every bad pruning input is an HTTP 400 naming the field and its allowed values; the engine
keeps serving."""

from __future__ import annotations

import json

import pytest
from helpers.server import MODEL, N_VISUAL, chat_body

pytestmark = pytest.mark.server

# (case id, top-level fields, expected param, text the message must contain)
BAD_FIELDS = [
    ("ratio-too-big", {"keep_ratio": 1.5}, "keep_ratio", "(0, 1]"),
    ("ratio-zero", {"keep_ratio": 0}, "keep_ratio", "(0, 1]"),
    ("ratio-negative", {"keep_ratio": -0.25}, "keep_ratio", "(0, 1]"),
    ("ratio-string", {"keep_ratio": "0.5"}, "keep_ratio", "(0, 1]"),
    ("ratio-bool", {"keep_ratio": True}, "keep_ratio", "(0, 1]"),
    ("ratio-list", {"keep_ratio": [0.5]}, "keep_ratio", "(0, 1]"),
    ("tokens-zero", {"keep_tokens": 0}, "keep_tokens", "integer >= 1"),
    ("tokens-fraction", {"keep_tokens": 2.5}, "keep_tokens", "integer >= 1"),
    ("tokens-float", {"keep_tokens": 4.0}, "keep_tokens", "integer >= 1"),
    ("both-budgets", {"keep_ratio": 0.5, "keep_tokens": 4}, "keep_tokens", "not both"),
    ("unknown-method", {"pruning_method": "magic"}, "pruning_method", "one of mi, trimtokenator"),
    ("method-type", {"pruning_method": 3}, "pruning_method", "one of mi"),
    (
        "none-with-budget",
        {"pruning_method": "none", "keep_ratio": 0.5},
        "pruning_method",
        "keeps every token",
    ),
    ("lambda-too-big", {"mi_lambda": 2}, "mi_lambda", "[0, 1]"),
    ("lambda-negative", {"mi_lambda": -0.1}, "mi_lambda", "[0, 1]"),
    ("lambda-string", {"mi_lambda": "high"}, "mi_lambda", "[0, 1]"),
    ("tau-zero", {"mi_tau": 0}, "mi_tau", "[0.001, 1000]"),
    ("tau-huge", {"mi_tau": 1e6}, "mi_tau", "[0.001, 1000]"),
    ("aggregation", {"mi_aggregation": "median"}, "mi_aggregation", "one of max, mean"),
    ("seed-negative", {"pruning_seed": -1}, "pruning_seed", "integer >= 0"),
    ("unknown-field", {"keep_ration": 0.5}, "keep_ration", "unknown pruning field"),
    ("unknown-mi-field", {"mi_gamma": 0.5}, "mi_gamma", "unknown pruning field"),
    (
        "processor-kwarg",
        {"mm_processor_kwargs": {"max_pixels": 10_000_000}},
        "mm_processor_kwargs.max_pixels",
        "not an allowed processor argument",
    ),
    ("processor-kwargs-type", {"mm_processor_kwargs": [1, 2]}, "mm_processor_kwargs", "object"),
    (
        "processor-kwarg-bad-value",
        {"mm_processor_kwargs": {"keep_ratio": 7}},
        "mm_processor_kwargs.keep_ratio",
        "(0, 1]",
    ),
    (
        "given-twice",
        {"keep_ratio": 0.5, "mm_processor_kwargs": {"keep_ratio": 0.5}},
        "mm_processor_kwargs.keep_ratio",
        "both",
    ),
]

# Python's json (vLLM's and ours) reads these non-standard literals; they must not get through.
BAD_RAW = [
    ("ratio-nan", '"keep_ratio": NaN', "keep_ratio"),
    ("ratio-inf", '"keep_ratio": Infinity', "keep_ratio"),
    ("tau-nan", '"mi_tau": NaN', "mi_tau"),
    ("lambda-neg-inf", '"mi_lambda": -Infinity', "mi_lambda"),
]


def _assert_400(response, param: str, text: str | None = None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert param in error["message"]
    if text is not None:
        assert text in error["message"], error["message"]


@pytest.mark.parametrize(
    "fields,param,text", [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS]
)
def test_bad_field_is_400_naming_it(http, fields, param, text):
    _assert_400(http.post("/v1/chat/completions", json=chat_body(**fields)), param, text)


@pytest.mark.parametrize("literal,param", [c[1:] for c in BAD_RAW], ids=[c[0] for c in BAD_RAW])
def test_non_finite_number_is_400(http, literal, param):
    body = json.dumps(chat_body())[:-1] + ", " + literal + "}"
    response = http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    _assert_400(response, param, "a number in")


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"keep_ratio": 2}, "keep_ratio"),
        ({"keep_tokens": -3}, "keep_tokens"),
        ({"pruning_method": "magic"}, "pruning_method"),
    ],
)
def test_completions_endpoint_validates_too(http, fields, param):
    response = http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 1, **fields}
    )
    _assert_400(response, param)


def test_streaming_request_with_bad_field_is_plain_400(http):
    response = http.post("/v1/chat/completions", json=chat_body(stream=True, keep_ratio=-1))
    _assert_400(response, "keep_ratio")
    assert response.headers["content-type"].startswith("application/json")


def test_null_means_server_default(http):
    response = http.post("/v1/chat/completions", json=chat_body(keep_ratio=None, mi_lambda=None))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["visual_tokens_kept"] == N_VISUAL


def test_valid_request_right_after_bad_ones_succeeds(http):
    for fields, _, _ in [c[1:] for c in BAD_FIELDS[:5]]:
        assert http.post("/v1/chat/completions", json=chat_body(**fields)).status_code == 400
    response = http.post("/v1/chat/completions", json=chat_body(keep_ratio=0.5))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["visual_tokens_kept"] == N_VISUAL // 2
    assert http.get("/health").status_code == 200


def test_non_pruning_errors_still_come_from_vllm(http):
    # Not our business: vLLM's own validation answers it, in the same error shape.
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": "not a list"})
    assert response.status_code in (400, 422)
    assert "error" in response.json()


def test_a_body_that_is_not_json_is_400_naming_the_body(http):
    response = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _assert_400(response, "body", "not valid JSON")


def test_tokenize_route_is_guarded_and_honours_pruning_kwargs(http):
    messages = chat_body()["messages"]
    full = http.post("/tokenize", json={"model": MODEL, "messages": messages})
    assert full.status_code == 200, full.text
    pruned = http.post(
        "/tokenize",
        json={"model": MODEL, "messages": messages, "mm_processor_kwargs": {"keep_ratio": 0.25}},
    )
    assert pruned.status_code == 200, pruned.text
    assert pruned.json()["count"] == full.json()["count"] - (N_VISUAL - N_VISUAL // 4)
    _assert_400(
        http.post(
            "/tokenize",
            json={
                "model": MODEL,
                "messages": messages,
                "mm_processor_kwargs": {"max_pixels": 10**7},
            },
        ),
        "mm_processor_kwargs.max_pixels",
        "not an allowed processor argument",
    )
    _assert_400(
        http.post("/tokenize", json={"model": MODEL, "messages": messages, "keep_ratio": 0.5}),
        "keep_ratio",
    )
