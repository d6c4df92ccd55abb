# SPDX-License-Identifier: Apache-2.0
"""The pruning layer's pure parts, without a server: body rewrite, SSE usage, OpenAPI, flags."""

from __future__ import annotations

import argparse
import json

import pytest

from mipruner_vllm.config import get_settings
from mipruner_vllm.outcome import ItemOutcome, RequestOutcome
from mipruner_vllm.server.policy import CHAT_PATH, COMPLETIONS_PATH, RequestRefused, apply_policy
from mipruner_vllm.server.protocol import openapi_with_pruning
from mipruner_vllm.server.usage import UsageRewriter


def prepare_body(body, *, endpoint, pruning_enabled):
    """The body the policy hands vLLM (the policy's input is left untouched)."""
    before = json.dumps(body, allow_nan=True)
    out = apply_policy(
        body, route=endpoint, settings=get_settings(), pruning_enabled=pruning_enabled
    ).body
    assert json.dumps(body, allow_nan=True) == before  # a pure function
    return out


pytestmark = [pytest.mark.server, pytest.mark.usefixtures("clean_settings")]


def test_fields_move_into_normalised_mm_processor_kwargs():
    body = {"model": "m", "messages": [], "mi_lambda": 1, "keep_ratio": 0.5, "temperature": 0}
    out = prepare_body(body, endpoint=CHAT_PATH, pruning_enabled=True)
    kwargs = out.pop("mm_processor_kwargs")
    assert out == {"model": "m", "messages": [], "temperature": 0}
    assert list(kwargs) == sorted(kwargs)
    assert (
        kwargs["keep_ratio"] == 0.5
        and kwargs["mi_lambda"] == 1.0
        and isinstance(kwargs["mi_lambda"], float)
    )
    assert kwargs["pruning_method"] == "mi"


def test_equal_settings_give_equal_kwargs_whatever_the_spelling():
    a = prepare_body({"keep_ratio": 0.25, "mi_tau": 0.1}, endpoint=CHAT_PATH, pruning_enabled=True)
    b = prepare_body(
        {"mm_processor_kwargs": {"mi_tau": 0.1, "keep_ratio": 0.25}},
        endpoint=CHAT_PATH,
        pruning_enabled=True,
    )
    c = prepare_body({"keep_ratio": 0.25}, endpoint=CHAT_PATH, pruning_enabled=True)
    assert json.dumps(a) == json.dumps(b) == json.dumps(c)


def test_server_defaults_fill_unset_fields(monkeypatch):
    from mipruner_vllm.config import get_settings

    monkeypatch.setenv("MIPRUNER_KEEP_RATIO", "0.5")
    monkeypatch.setenv("MIPRUNER_MI_LAMBDA", "0.3")
    get_settings.cache_clear()
    kwargs = prepare_body({}, endpoint=CHAT_PATH, pruning_enabled=True)["mm_processor_kwargs"]
    assert (kwargs["keep_ratio"], kwargs["mi_lambda"]) == (0.5, 0.3)


def test_completions_fields_are_validated_then_dropped():
    assert prepare_body(
        {"prompt": "x", "keep_ratio": 0.5}, endpoint=COMPLETIONS_PATH, pruning_enabled=True
    ) == {"prompt": "x"}
    with pytest.raises(RequestRefused):
        prepare_body(
            {"prompt": "x", "keep_ratio": 5}, endpoint=COMPLETIONS_PATH, pruning_enabled=True
        )


def test_unprunable_model_refuses_fields_but_serves_plain_requests():
    assert prepare_body({"model": "m"}, endpoint=CHAT_PATH, pruning_enabled=False) == {"model": "m"}
    with pytest.raises(RequestRefused) as err:
        prepare_body({"keep_ratio": 0.5}, endpoint=CHAT_PATH, pruning_enabled=False)
    assert err.value.field == "keep_ratio" and "no pruning support" in err.value.message


@pytest.mark.parametrize(
    "body,field",
    [
        ({"keep_ratio": True}, "keep_ratio"),
        ({"keep_tokens": 3.0}, "keep_tokens"),
        ({"pruning_method": ["mi"]}, "pruning_method"),
        ({"keep_ratio": float("nan")}, "keep_ratio"),
        ({"trim_ratio": 0.5}, "trim_ratio"),
        ({"mm_processor_kwargs": {"min_pixels": 1}}, "mm_processor_kwargs.min_pixels"),
    ],
)
def test_refusals_name_the_field(body, field):
    with pytest.raises(RequestRefused) as err:
        prepare_body(body, endpoint=CHAT_PATH, pruning_enabled=True)
    assert err.value.field == field


def test_sse_rewriter_adds_usage_fields_across_split_chunks():
    outcome = RequestOutcome([ItemOutcome("image", 16, 4, "mi")])
    rewriter = UsageRewriter(
        "sse",
        lambda final: {
            "visual_tokens": outcome.visual_tokens,
            "visual_tokens_kept": outcome.visual_tokens_kept,
        },
    )
    stream = (
        b'data: {"model":"m","choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
        b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":9,"total_tokens":10}}\n\n'
        b"data: [DONE]\n\n"
    )
    out = (
        b"".join(rewriter.feed(stream[i : i + 7]) for i in range(0, len(stream), 7))
        + rewriter.flush()
    )
    events = [e for e in out.split(b"\n\n") if e]
    assert events[0] == stream.split(b"\n\n")[0] and events[-1] == b"data: [DONE]"
    usage = json.loads(events[1][len(b"data: ") :])["usage"]
    assert usage == {
        "prompt_tokens": 9,
        "total_tokens": 10,
        "visual_tokens": 16,
        "visual_tokens_kept": 4,
    }
    assert rewriter.model == "m" and rewriter.complete


def test_openapi_patch_adds_fields_without_touching_others():
    schema = {
        "components": {
            "schemas": {
                "ChatCompletionRequest": {"properties": {"model": {"type": "string"}}},
                "Other": {"properties": {}},
            }
        }
    }
    patched = openapi_with_pruning(schema)
    props = patched["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"model", "keep_ratio", "keep_tokens", "mi_lambda", "mi_tau", "pruning_method"} <= set(
        props
    )
    assert patched["components"]["schemas"]["Other"] == {"properties": {}}
    assert (
        "keep_ratio" not in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    )


def _flags(**given):
    from mipruner_vllm.server.flags import PRUNING_FLAGS, add_pruning_args

    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    argv = [item for flag, value in given.items() for item in (flag, str(value))]
    assert set(given) <= set(PRUNING_FLAGS)
    return parser.parse_args(argv)


def test_launcher_exports_pruning_defaults_for_engine_processes():
    import os

    from mipruner_vllm.config import get_settings
    from mipruner_vllm.server.flags import export_pruning_defaults

    exported = ("MIPRUNER_KEEP_RATIO", "MIPRUNER_METHOD", "MIPRUNER_MI_LAMBDA")
    try:
        export_pruning_defaults(
            _flags(**{"--keep-ratio": 0.4, "--pruning-method": "similarity", "--mi-lambda": 0.7})
        )
        assert (os.environ["MIPRUNER_KEEP_RATIO"], os.environ["MIPRUNER_METHOD"]) == (
            "0.4",
            "similarity",
        )
        assert (get_settings().keep_ratio, get_settings().mi_lambda) == (0.4, 0.7)
    finally:
        # Plain removal, not monkeypatch.delenv: that would "restore" the exported values at
        # teardown and leak them into every later test (and the vLLM engines they start).
        for name in exported:
            os.environ.pop(name, None)
        get_settings.cache_clear()


@pytest.mark.parametrize(
    "given,flag",
    [
        ({"--keep-ratio": 1.5}, "--keep-ratio"),
        ({"--mi-tau": 0}, "--mi-tau"),
        ({"--pruning-method": "magic"}, "--pruning-method"),
        ({"--keep-ratio": 0.5, "--keep-tokens": 3}, "--keep-tokens"),
    ],
)
def test_launcher_refuses_bad_defaults_naming_the_flag(given, flag):
    from mipruner_vllm.server.flags import export_pruning_defaults

    with pytest.raises(ValueError, match=flag):
        export_pruning_defaults(_flags(**given))


def test_other_routes_apply_the_allow_list_and_refuse_top_level_fields():
    # --trust-request-mm-kwargs is server-wide: /tokenize, pooling, responses... are guarded too.
    body = {"messages": [], "mm_processor_kwargs": {"keep_ratio": 0.5}}
    kwargs = prepare_body(body, endpoint="/tokenize", pruning_enabled=True)["mm_processor_kwargs"]
    assert kwargs["keep_ratio"] == 0.5 and list(kwargs) == sorted(kwargs)
    assert prepare_body({"input": "x"}, endpoint="/v1/embeddings", pruning_enabled=True) == {
        "input": "x"
    }
    with pytest.raises(RequestRefused) as err:
        prepare_body(
            {"mm_processor_kwargs": {"max_pixels": 1}}, endpoint="/tokenize", pruning_enabled=True
        )
    assert err.value.field == "mm_processor_kwargs.max_pixels"
    with pytest.raises(RequestRefused) as err:
        prepare_body({"keep_ratio": 0.5}, endpoint="/pooling", pruning_enabled=True)
    assert err.value.field == "keep_ratio" and "mm_processor_kwargs" in err.value.message


def test_method_none_with_a_default_budget_round_trips(monkeypatch):
    from mipruner_vllm.config import get_settings
    from mipruner_vllm.params import params_from_request

    monkeypatch.setenv("MIPRUNER_KEEP_RATIO", "0.5")
    get_settings.cache_clear()
    kwargs = prepare_body({"pruning_method": "none"}, endpoint=CHAT_PATH, pruning_enabled=True)[
        "mm_processor_kwargs"
    ]
    assert kwargs["keep_ratio"] == 1.0  # none keeps everything, whatever the default budget
    assert params_from_request(kwargs).n_keep(16) == 16  # what the processor will do with it


def test_policy_switches_relax_exactly_what_they_name():
    from mipruner_vllm.config import MiprunerSettings

    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:,"}, "uuid": "a"}],
            }
        ],
        "media_io_kwargs": {"video": {"num_frames": 8}},
    }
    strict = MiprunerSettings()
    with pytest.raises(RequestRefused) as err:
        apply_policy(body, route=CHAT_PATH, settings=strict, pruning_enabled=True)
    assert err.value.field in ("media_io_kwargs.video.num_frames", "messages[0].content[0].uuid")
    relaxed = MiprunerSettings(allowed_media_io_kwargs=["video.num_frames"], trust_media_uuids=True)
    out = apply_policy(body, route=CHAT_PATH, settings=relaxed, pruning_enabled=True).body
    assert out["media_io_kwargs"] == {"video": {"num_frames": 8}}
    assert out["messages"][0]["content"][0]["uuid"] == "a"
    with pytest.raises(RequestRefused) as err:  # another key of the same modality is still refused
        apply_policy(
            {"media_io_kwargs": {"video": {"fps": 100}}},
            route=CHAT_PATH,
            settings=relaxed,
            pruning_enabled=True,
        )
    assert err.value.field == "media_io_kwargs.video.fps"


def test_nested_processor_kwargs_and_routes():
    settings = get_settings()
    with pytest.raises(RequestRefused) as err:
        apply_policy(
            {"prompt": {"mm_processor_kwargs": {"max_pixels": 1}}},
            route="/inference/v1/generate",
            settings=settings,
            pruning_enabled=True,
        )
    assert err.value.field == "prompt.mm_processor_kwargs.max_pixels"
    # /invocations with a completions-shaped body: validated, nothing to act on, dropped.
    out = apply_policy(
        {"prompt": "x", "keep_ratio": 0.5},
        route="/invocations",
        settings=settings,
        pruning_enabled=True,
    ).body
    assert out == {"prompt": "x"}
    for route in ("/v1/chat/completions/batch", "/v1/responses", "/invocations"):
        decision = apply_policy(
            {"messages": [], "keep_ratio": 0.5},
            route=route,
            settings=settings,
            pruning_enabled=True,
        )
        assert decision.generate and decision.body["mm_processor_kwargs"]["keep_ratio"] == 0.5


@pytest.mark.parametrize(
    "key", ["Keep_Ratio", "KEEP_RATIO", "keepRatio", "keep-ratio", "Pruning-Method", "mipruner"]
)
def test_lookalikes_name_the_field_to_use(key):
    from mipruner_vllm.server.policy import canonical

    with pytest.raises(RequestRefused) as err:
        apply_policy({key: 0.5}, route=CHAT_PATH, settings=get_settings(), pruning_enabled=True)
    assert err.value.field == key
    if key != "mipruner":
        assert f"'{canonical(key)}'" in err.value.message
