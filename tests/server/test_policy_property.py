# SPDX-License-Identifier: Apache-2.0
"""Property test of the request policy over generated bodies (hypothesis, no server).

Every body either gets a refusal naming a field of the body, or reaches vLLM with only
allow-listed keys: processor kwargs that are valid, normalised pruning fields; media_io_kwargs
the operator allowed; no client media uuid unless trusted; no pruning look-alike at the top level;
bounded depth. The policy never raises anything else and never modifies its input.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipruner_vllm.config import MiprunerSettings
from mipruner_vllm.params import (
    PRUNING_PREFIXES,
    REQUEST_FIELDS,
    params_from_request,
    request_fields,
)
from mipruner_vllm.server.policy import (
    GENERATE_PATHS,
    MEDIA_PART_KEYS,
    RequestRefused,
    apply_policy,
    canonical,
    parse_body,
    reads_as,
)

pytestmark = pytest.mark.server

ROUTES = [
    *GENERATE_PATHS,
    "/tokenize",
    "/pooling",
    "/v1/embeddings",
    "/classify",
    "/score",
    "/v1/unknown",
]
LOOKALIKES = [
    "Keep_Ratio",
    "KEEP_RATIO",
    "keepRatio",
    "keep-ratio",
    "mipruner",
    "MiPruner",
    "keep_ration",
    "mi_gamma",
    "pruning_seeds",
    "trim_ratio",
    "Pruning-Method",
    "keepratio",
    "KEEPRATIO",
    "keeptokens",
    "pruningmethod",
    "keep\u200bratio",
    "\uff4b\uff45\uff45\uff50_\uff52\uff41\uff54\uff49\uff4f",
    "k\u0435ep_ratio",
]
#: One-character look-alikes (Unicode confusables) of letters in the pruning fields.
CONFUSABLE = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "i": "\u0456"}


def _disguise(field: str, how: int, at: int) -> str:
    """``field`` written so that it reads the same but is not the same string."""
    at %= len(field)
    if how == 0:
        return field.replace("_", "")
    if how == 1:
        return field.upper()
    if how == 2:
        return field[:at] + "\u200b" + field[at:]  # zero-width space
    if how == 3:
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in field)  # full-width
    if how == 4:
        swappable = [i for i, c in enumerate(field) if c in CONFUSABLE] or [0]
        i = swappable[at % len(swappable)]
        return field[:i] + CONFUSABLE.get(field[i], field[i]) + field[i + 1 :]
    return field.replace("_", "-").title()


#: Keys that read as a pruning field (case, separators, zero-width, width, confusables).
disguised = st.builds(
    _disguise, st.sampled_from(list(REQUEST_FIELDS)), st.integers(0, 5), st.integers(0, 40)
).filter(lambda key: key not in REQUEST_FIELDS)
OTHER_KEYS = [
    "model",
    "max_tokens",
    "temperature",
    "seed",
    "stream",
    "n",
    "tools",
    "response_format",
    "chat_template_kwargs",
    "extra",
    "input",
    "prompt",
]
PROCESSOR_KEYS = [*REQUEST_FIELDS, "max_pixels", "min_pixels", "mipruner", "fps", "Keep_Ratio"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 4, 16, 1000, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**400]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 1e-3, 1e3]),
    st.text(max_size=8),
    st.sampled_from(["mi", "random", "none", "max", "softmax", "magic"]),
)


def _json(max_leaves: int = 12):
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from([*OTHER_KEYS, "uuid", "type", "url"]), inner, max_size=3
            )
        ),
        max_leaves=max_leaves,
    )


processor_kwargs = st.one_of(
    st.dictionaries(st.sampled_from(PROCESSOR_KEYS), scalars, max_size=4), _json(4)
)
media_io_kwargs = st.one_of(
    st.dictionaries(
        st.sampled_from(["image", "video", "audio"]),
        st.one_of(
            st.dictionaries(
                st.sampled_from(["fps", "num_frames", "image_mode"]), scalars, max_size=2
            ),
            scalars,
        ),
        max_size=2,
    ),
    scalars,
)
part = st.fixed_dictionaries(
    {"type": st.sampled_from(["image_url", "text", "video_url", "input_image"])},
    optional={
        "image_url": st.one_of(
            st.none(), st.fixed_dictionaries({"url": st.just("data:image/png;base64,AA==")})
        ),
        "text": st.text(max_size=5),
        "uuid": st.one_of(st.none(), st.text(max_size=6)),
        "mm_processor_kwargs": processor_kwargs,
    },
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": st.one_of(st.text(max_size=5), st.lists(part, max_size=3)),
        }
    ),
    max_size=2,
)
body_keys = st.one_of(st.sampled_from([*REQUEST_FIELDS, *LOOKALIKES, *OTHER_KEYS]), disguised)
bodies = st.builds(
    lambda base, kwargs, io, msgs, uuids, use: {
        **base,
        **({"mm_processor_kwargs": kwargs} if use & 1 else {}),
        **({"media_io_kwargs": io} if use & 2 else {}),
        **({"messages": msgs} if use & 4 else {}),
        **({"multi_modal_uuids": uuids} if use & 8 else {}),
    },
    st.dictionaries(body_keys, st.one_of(scalars, _json(4)), max_size=5),
    processor_kwargs,
    media_io_kwargs,
    messages,
    st.one_of(st.none(), _json(3)),
    st.integers(0, 15),
)
server_settings = st.builds(
    lambda io, trust, depth: MiprunerSettings(
        allowed_media_io_kwargs=io, trust_media_uuids=trust, max_json_depth=depth
    ),
    st.lists(
        st.sampled_from(["video.fps", "video.num_frames", "image.image_mode"]),
        max_size=2,
        unique=True,
    ),
    st.booleans(),
    st.sampled_from([8, 64]),
)


def _objects(value, depth=1):
    """(object, depth) for every object in ``value`` (recursion is fine at these sizes)."""
    if isinstance(value, dict):
        yield value, depth
        for child in value.values():
            yield from _objects(child, depth + 1)
    elif isinstance(value, list):
        for child in value:
            yield from _objects(child, depth + 1)


def _max_depth(value, depth=1):
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    return max([depth, *(_max_depth(c, depth + 1) for c in children if isinstance(c, dict | list))])


def _allowed_body(out, route, policy_settings, enabled):
    assert _max_depth(out) <= policy_settings.max_json_depth
    if not isinstance(out, dict):
        return
    for key in out:
        name = canonical(key)
        assert key not in REQUEST_FIELDS, key  # moved into mm_processor_kwargs (or dropped)
        assert not (
            name in REQUEST_FIELDS
            or reads_as(key) is not None
            or name.startswith(PRUNING_PREFIXES)
            or name.startswith("mipruner")
        ), key
    if "mm_processor_kwargs" in out:
        assert enabled
        params = params_from_request(out["mm_processor_kwargs"], settings=policy_settings)
        assert out["mm_processor_kwargs"] == request_fields(params)  # resolved and normalised
    allowed_io = set(policy_settings.allowed_media_io_kwargs)
    for obj, depth in _objects(out):
        if obj.get("mm_processor_kwargs") is not None:
            assert set(obj["mm_processor_kwargs"]) <= set(REQUEST_FIELDS)
            params_from_request(
                obj["mm_processor_kwargs"], settings=policy_settings
            )  # valid values
        if obj.get("media_io_kwargs") is not None:
            io = obj["media_io_kwargs"]
            assert {f"{m}.{k}" for m, options in io.items() for k in options} <= allowed_io
        if not policy_settings.trust_media_uuids:
            assert obj.get("multi_modal_uuids") is None
            if depth > 1 and (isinstance(obj.get("type"), str) or MEDIA_PART_KEYS & obj.keys()):
                assert obj.get("uuid") is None, obj


def _policy_property(body_strategy: st.SearchStrategy, max_examples: int) -> Callable:
    """The policy property's Hypothesis settings and inputs: bodies from ``body_strategy`` on
    every route, under any server settings, with pruning on or off."""

    def decorate(test: Callable) -> Callable:
        return settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )(
            given(
                body=body_strategy,
                route=st.sampled_from(ROUTES),
                policy_settings=server_settings,
                enabled=st.booleans(),
            )(test)
        )

    return decorate


@_policy_property(bodies, max_examples=600)
def test_every_body_is_refused_naming_a_field_or_reaches_vllm_allow_listed(
    body, route, policy_settings, enabled
):
    original = copy.deepcopy(body)
    try:
        decision = apply_policy(
            body, route=route, settings=policy_settings, pruning_enabled=enabled
        )
    except RequestRefused as exc:
        assert exc.field and exc.message
        head = exc.field.split(".")[0].split("[")[0]
        assert head == "body" or head in body, (exc.field, sorted(body))
    else:
        _allowed_body(decision.body, route, policy_settings, enabled)
        json.dumps(decision.body, allow_nan=True)  # what the dispatcher forwards
    assert _same(body, original)  # a pure function: its input is untouched


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(key=disguised, route=st.sampled_from(GENERATE_PATHS))
def test_a_key_that_reads_as_a_pruning_field_is_refused_naming_the_field(key, route):
    with pytest.raises(RequestRefused) as err:
        apply_policy(
            {"model": "m", key: 0.5},
            route=route,
            settings=MiprunerSettings(),
            pruning_enabled=True,
        )
    assert err.value.field == key
    assert f"use '{reads_as(key)}'" in err.value.message


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda value: json.dumps(value, allow_nan=True).encode(), _json()),
    st.builds(
        lambda digits, sign: b'{"max_tokens": [' + sign + b"7" * digits + b"]}",
        st.integers(4290, 4310),
        st.sampled_from([b"", b"-"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(raw=raw_bodies, encoding=st.sampled_from([None, "", "identity", "gzip", "br"]))
def test_any_body_parses_or_is_refused_naming_where(raw, encoding):
    try:
        body = parse_body(raw, encoding)
    except RequestRefused as exc:
        assert exc.field == "body" or exc.field.startswith("max_tokens"), exc.field
        assert exc.message
    else:
        assert encoding in (None, "", "identity")
        assert _same(body, json.loads(raw))  # exactly what Python's json reads
        json.dumps(body, allow_nan=True)  # and what the dispatcher forwards


def test_deep_body_is_refused_without_recursion():
    body: list = []
    for _ in range(50_000):
        body = [body]
    with pytest.raises(RequestRefused) as err:
        apply_policy(
            {"messages": body},
            route="/v1/chat/completions",
            settings=MiprunerSettings(),
            pruning_enabled=True,
        )
    assert err.value.field == "body"


chat_bodies = st.builds(
    lambda msgs, extra: {"model": "m", "messages": msgs, **extra},
    messages,
    st.dictionaries(
        st.sampled_from(["keep_ratio", "pruning_method", "max_tokens"]), scalars, max_size=1
    ),
)


@_policy_property(chat_bodies, max_examples=300)
def test_chat_shaped_bodies_follow_the_same_property(body, route, policy_settings, enabled):
    # Mostly well-formed chat bodies, so that content parts (media, uuids, nested kwargs) are
    # often accepted and their acceptance checked, not only refused.
    test_every_body_is_refused_naming_a_field_or_reaches_vllm_allow_listed.hypothesis.inner_test(
        body, route, policy_settings, enabled
    )
