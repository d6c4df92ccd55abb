# SPDX-License-Identifier: Apache-2.0
"""The evaluation client adds the pruning fields to every request and changes nothing else.

The official openai client runs against an in-process HTTP handler (httpx's MockTransport), so
what is checked is the JSON body that would reach the server.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from mipruner_vllm.errors import PruningParameterError
from mipruner_vllm.evaluation.client import PruningClient, UsageTally, with_pruning_fields
from mipruner_vllm.evaluation.fields import describe, pruning_fields, split_model_args

pytestmark = pytest.mark.unit
openai = pytest.importorskip("openai")

IMAGE = "data:image/png;base64,iVBORw0KGgo="


def _completion(usage: dict) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "red"},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


class Endpoint:
    """Records every request body; answers with ``usage`` (or an error status)."""

    def __init__(self, usage: dict | None = None, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.usage = usage or {
            "prompt_tokens": 37,
            "completion_tokens": 1,
            "total_tokens": 38,
            "visual_tokens": 16,
            "visual_tokens_kept": 4,
        }
        self.status = status
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.bodies.append(json.loads(request.content))
        if self.status != 200:
            return httpx.Response(
                self.status,
                json={
                    "error": {
                        "message": "Invalid request field 'mi_tau'",
                        "type": "BadRequestError",
                        "param": "mi_tau",
                        "code": self.status,
                    }
                },
            )
        return httpx.Response(200, json=_completion(self.usage))

    def client(self):
        return openai.OpenAI(
            base_url="http://127.0.0.1:9/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.Client(transport=httpx.MockTransport(self)),
        )


def _tool_request(**overrides) -> dict:
    """A request as lmms-eval's openai chat model builds it (images first, then the text)."""
    request = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": IMAGE}},
                    {
                        "type": "text",
                        "text": (
                            "Is there a dog?\nAnswer the question using a single word or phrase."
                        ),
                    },
                ],
            }
        ],
        "model": "mipruner-demo",
        "max_tokens": 128,
        "temperature": 0,
        "top_p": 1.0,
        "seed": 7,
    }
    request.update(overrides)
    return request


FIELDS = {"keep_ratio": 0.25, "mi_lambda": 0.5, "pruning_method": "mi"}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"extra_body": {"media_io_kwargs": {"video": {"num_frames": 8}}}},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
        {"n": 1, "presence_penalty": 0.5},
    ],
)
def test_fields_on_every_request_and_nothing_else_changes(overrides):
    plain, pruned = Endpoint(), Endpoint()
    wrapped = PruningClient(pruned.client(), FIELDS)
    for _ in range(3):
        request = _tool_request(**overrides)
        snapshot = json.dumps(request, sort_keys=True)
        plain.client().chat.completions.create(**request)
        wrapped.chat.completions.create(**request)
        assert json.dumps(request, sort_keys=True) == snapshot, "the caller's request was mutated"
    assert len(pruned.bodies) == 3
    for sent, reference in zip(pruned.bodies, plain.bodies, strict=True):
        # The pruning fields are at the top level of the body, with their JSON types...
        assert {k: sent[k] for k in FIELDS} == FIELDS
        assert isinstance(sent["keep_ratio"], float)
        # ...and without them the body is byte-for-byte what the stock client sends.
        assert json.dumps(
            {k: v for k, v in sent.items() if k not in FIELDS}, sort_keys=True
        ) == json.dumps(reference, sort_keys=True)


def test_streamed_requests_carry_the_fields_and_are_tallied():
    chunks = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "re"}}],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [],
            "usage": {
                "prompt_tokens": 37,
                "completion_tokens": 1,
                "total_tokens": 38,
                "visual_tokens": 16,
                "visual_tokens_kept": 4,
            },
        },
    ]
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    wrapped = PruningClient(client, {"keep_ratio": 0.25})
    stream = wrapped.chat.completions.create(
        **_tool_request(), stream=True, stream_options={"include_usage": True}
    )
    assert [c.choices[0].delta.content for c in stream if c.choices] == ["re"]
    assert bodies[0]["keep_ratio"] == 0.25 and bodies[0]["stream"] is True
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert wrapped.tally.summary()["visual_tokens_kept"] == 4


def test_tally_counts_kept_tokens_failures_and_missing_pruning_usage():
    ok = Endpoint()
    wrapped = PruningClient(ok.client(), {"keep_ratio": 0.25})
    for _ in range(4):
        response = wrapped.chat.completions.create(**_tool_request())
        assert response.usage.model_extra["visual_tokens_kept"] == 4
    summary = wrapped.tally.summary()
    assert (summary["requests"], summary["requests_failed"]) == (4, 0)
    assert (summary["visual_tokens"], summary["visual_tokens_kept"]) == (64, 16)
    assert summary["kept_fraction"] == 0.25 and summary["responses_without_pruning_usage"] == 0

    # A 400 is counted and re-raised untouched: the tool's own retry logic sees it as before.
    bad = PruningClient(Endpoint(status=400).client(), {"keep_ratio": 0.25, "mi_tau": 5000.0})
    with pytest.raises(openai.BadRequestError):
        bad.chat.completions.create(**_tool_request())
    assert bad.tally.summary()["requests_failed"] == 1
    assert "mi_tau" in bad.tally.summary()["first_error"]

    # A stock server returns no visual-token usage: the tally says so instead of counting zero.
    stock = PruningClient(
        Endpoint(usage={"prompt_tokens": 49, "completion_tokens": 1, "total_tokens": 50}).client(),
        {"keep_ratio": 0.25},
    )
    stock.chat.completions.create(**_tool_request())
    assert stock.tally.summary()["responses_without_pruning_usage"] == 1
    assert "is the endpoint mipruner-vllm serve?" in stock.tally.describe()


def test_other_client_attributes_pass_through():
    endpoint = Endpoint()
    inner = endpoint.client()
    wrapped = PruningClient(inner, FIELDS)
    assert wrapped.base_url == inner.base_url
    assert wrapped.chat.completions.with_raw_response is not None


def test_a_request_that_sets_a_field_differently_is_refused():
    with pytest.raises(ValueError, match="keep_ratio"):
        with_pruning_fields({"extra_body": {"keep_ratio": 0.5}}, {"keep_ratio": 0.25})
    assert with_pruning_fields({"extra_body": {"keep_ratio": 0.25}}, {"keep_ratio": 0.25})[
        "extra_body"
    ] == {"keep_ratio": 0.25}
    assert with_pruning_fields({"model": "m"}, {}) == {"model": "m"}


def test_model_args_are_split_typed_and_checked():
    # lmms-eval's --model_args parser turns "1" into the integer 1 and "true" into True.
    fields, rest = split_model_args(
        {
            "base_url": "http://127.0.0.1:8000/v1",
            "keep_ratio": 1,
            "mi_lambda": 0,
            "pruning_seed": 3,
            "pruning_method": "trimtokenator",
            "num_concurrent": 4,
            "mi_tau": None,
        }
    )
    assert fields == {
        "keep_ratio": 1.0,
        "mi_lambda": 0.0,
        "pruning_method": "trimtokenator",
        "pruning_seed": 3,
    }
    assert isinstance(fields["keep_ratio"], float)
    assert rest == {"base_url": "http://127.0.0.1:8000/v1", "num_concurrent": 4}
    assert (
        describe(fields)
        == "keep_ratio=1.0,pruning_method=trimtokenator,mi_lambda=0.0,pruning_seed=3"
    )


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"keep_ration": 0.25}, "keep_ration"),
        ({"mi_tau": 5000}, "mi_tau"),
        ({"keep_ratio": 0.5, "keep_tokens": 4}, ("keep_ratio", "keep_tokens")),
        ({"pruning_method": "best"}, "pruning_method"),
        ({"keep_tokens": 4.0}, "keep_tokens"),
        ({"keep_ratio": True}, "keep_ratio"),
    ],
)
def test_bad_model_args_stop_before_any_request(values, field):
    with pytest.raises(PruningParameterError) as info:
        split_model_args(values)
    assert info.value.field in (field if isinstance(field, tuple) else (field,))


def test_pruning_fields_keeps_strings_and_sorts():
    assert list(pruning_fields({"pruning_method": "mi", "keep_tokens": 64})) == [
        "keep_tokens",
        "pruning_method",
    ]


def test_usage_tally_is_thread_safe():
    tally = UsageTally()
    usage = {"visual_tokens": 16, "visual_tokens_kept": 4, "prompt_tokens": 37}
    threads = [
        threading.Thread(target=lambda: [tally.record(usage, 0.01) for _ in range(500)])
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tally.requests, tally.visual_tokens_kept) == (4000, 16000)
