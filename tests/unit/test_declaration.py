# SPDX-License-Identifier: Apache-2.0
"""One declaration per pruning parameter: every layer is derived from config.PRUNING_PARAMETERS."""

from __future__ import annotations

import argparse
import inspect

import pytest
import torch

from mipruner_vllm import PruningParameterError, resolve_params, select_tokens
from mipruner_vllm.config import PRUNING_PARAMETERS, SEED_MAX, MiprunerSettings, get_settings
from mipruner_vllm.integration.fields import PARAM_LAYOUT, decode_params, encode_params
from mipruner_vllm.params import (
    ALLOWED_VALUES,
    REQUEST_FIELDS,
    PruningParams,
    RequestFields,
    params_from_request,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("clean_settings")]


def test_every_layer_lists_exactly_the_declared_parameters():
    names = [p.name for p in PRUNING_PARAMETERS]
    requests = [p.request for p in PRUNING_PARAMETERS]
    assert list(PruningParams.model_fields) == names
    assert list(RequestFields.model_fields) == requests
    assert set(names) <= set(MiprunerSettings.model_fields)
    assert list(REQUEST_FIELDS) == requests and list(REQUEST_FIELDS.values()) == names
    assert list(PARAM_LAYOUT) == names
    assert list(ALLOWED_VALUES) == names
    keyword_only = [
        n for n, p in inspect.signature(resolve_params).parameters.items() if n != "settings"
    ]
    assert keyword_only == names
    assert [
        n
        for n in inspect.signature(select_tokens).parameters
        if n not in ("visual", "text", "backend")
    ] == names


def test_ranges_and_defaults_come_from_the_declaration():
    settings = MiprunerSettings()
    for p in PRUNING_PARAMETERS:
        assert getattr(settings, p.name) == p.default, p.name
        schema = RequestFields.model_json_schema()["properties"][p.request]
        first = schema["anyOf"][0]
        if p.choices is not None:
            assert first["enum"] == list(p.choices)
        else:
            bounds = {"gt": "exclusiveMinimum", "ge": "minimum", "le": "maximum"}
            assert {bounds[k]: v for k, v in p.constraints().items()} == {
                k: first[k] for k in ("exclusiveMinimum", "minimum", "maximum") if k in first
            }, p.name
        assert p.allowed in schema["description"]


def test_server_flags_are_derived():
    from mipruner_vllm.server.flags import PRUNING_FLAGS, add_pruning_args

    for p in PRUNING_PARAMETERS:
        assert PRUNING_FLAGS[p.flag][0] == p.name
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    args = parser.parse_args([p.flag for p in PRUNING_PARAMETERS if p.name == "seed"] + ["7"])
    assert args.mipruner_seed == 7


@pytest.mark.parametrize("seed", [0, 1, 2**53 + 1, 2**60, 2**60 + 1, 2**60 + 7, SEED_MAX])
def test_params_tensor_carries_every_value_exactly(seed):
    params = params_from_request(
        {
            "pruning_method": "random",
            "keep_ratio": 0.07,
            "pruning_seed": seed,
            "mi_tau": 0.1234567890123,
            "mi_lambda": 1 / 3,
        }
    )
    vector = encode_params(params)
    assert vector.dtype == torch.int64 and vector.shape == (len(PRUNING_PARAMETERS),)
    decoded = decode_params(vector)
    assert decoded == params and decoded.seed == seed and decoded.mi_lambda == 1 / 3
    budget = decode_params(encode_params(params_from_request({"keep_tokens": 2**31 - 1})))
    assert (budget.keep_ratio, budget.keep_tokens) == (None, 2**31 - 1)


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**64, 10**400])
def test_seed_outside_the_generator_range_is_refused_naming_the_range(seed):
    with pytest.raises(PruningParameterError) as err:
        params_from_request({"pruning_seed": seed})
    assert err.value.field == "pruning_seed" and str(SEED_MAX) in err.value.message
    assert len(err.value.message) < 200  # a 400-digit integer is not echoed in full


def test_largest_seed_runs_the_generator_and_frames_stay_in_range():
    kept = select_tokens(
        torch.randn(32, 8), torch.randn(2, 8), keep_ratio=0.25, method="random", seed=SEED_MAX
    )
    assert kept.numel() == 8
    # A video's frames use seed + frame: still within what manual_seed takes (< 2**64).
    torch.Generator().manual_seed(SEED_MAX + 10_000)


def test_deprecated_seed_setting_is_still_accepted(monkeypatch):
    monkeypatch.setenv("MIPRUNER_RANDOM_SEED", "11")
    get_settings.cache_clear()
    assert get_settings().seed == 11 and get_settings().random_seed == 11
    assert resolve_params(method="random").seed == 11
    monkeypatch.setenv("MIPRUNER_SEED", "12")  # the new name wins
    assert MiprunerSettings().seed == 12
    assert MiprunerSettings(random_seed=5).seed == 5


def test_server_docs_tables_match_the_declaration():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "server.md").read_text()
    for p in PRUNING_PARAMETERS:
        default = "unset" if p.default is None else str(p.default)
        assert f"| `{p.request}` | {p.json_type} | {p.allowed} | {default} |" in text, p.request
        assert f"| `{p.flag}` | `{p.env}` | {default}" in text, p.flag
