# SPDX-License-Identifier: Apache-2.0
"""One declaration per pruning parameter: every layer is derived from config.PRUNING_PARAMETERS."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Annotated

import pytest
import torch
from pydantic import Field

from mipruner_vllm import PruningParameterError, resolve_params, select_tokens
from mipruner_vllm.config import (
    PRUNING_PARAMETERS,
    SEED_MAX,
    MiprunerSettings,
    Parameter,
    PruningFields,
    RequestName,
    get_settings,
)
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


def test_old_seed_names_are_gone(monkeypatch):
    """0.1 had no release with ``random_seed``: it is neither a setting nor read from the env."""
    monkeypatch.setenv("MIPRUNER_RANDOM_SEED", "11")
    get_settings.cache_clear()
    assert get_settings().seed == 0 and not hasattr(get_settings(), "random_seed")


def test_a_budget_of_tokens_replaces_the_default_ratio(monkeypatch):
    monkeypatch.setenv("MIPRUNER_KEEP_TOKENS", "5")
    settings = MiprunerSettings()
    assert (settings.keep_ratio, settings.keep_tokens) == (None, 5)
    assert PruningParams(keep_tokens=5).n_keep(100) == 5
    assert resolve_params(settings=settings).keep_tokens == 5
    monkeypatch.delenv("MIPRUNER_KEEP_TOKENS")
    with pytest.raises(PruningParameterError, match="no budget"):
        resolve_params(settings=MiprunerSettings(keep_ratio=None))


def test_a_boolean_field_is_one_entry():
    """What a boolean request field (such as a future ``pruning_detail``) gets from one entry."""

    class WithSwitch(PruningFields):
        detail: Annotated[bool, RequestName("pruning_detail")] = Field(
            False, description="A switch."
        )

    p = Parameter.of("detail", WithSwitch.model_fields["detail"])
    assert (p.kind, p.json_type, p.allowed, p.flag, p.env) == (
        bool, "boolean", "true or false", "--pruning-detail", "MIPRUNER_DETAIL"
    )  # fmt: skip
    assert [p.from_slot(p.to_slot(v)) for v in (True, False)] == [True, False]


def test_the_declaration_needs_no_generated_model_to_be_typed():
    """Settings and resolved parameters are declared classes: attribute access is typed."""
    assert issubclass(MiprunerSettings, PruningFields) and issubclass(PruningParams, PruningFields)
    text = (Path(__file__).parents[2] / "mipruner_vllm" / "config.py").read_text()
    assert "type: ignore" not in text and "create_model" not in text
    annotations = {n: p.annotation for n, p in inspect.signature(select_tokens).parameters.items()}
    assert annotations["method"] == PruningFields.model_fields["method"].annotation | None


def test_server_docs_tables_match_the_declaration():
    text = (Path(__file__).parents[2] / "docs" / "server.md").read_text()
    for p in PRUNING_PARAMETERS:
        default = "unset" if p.default is None else str(p.default)
        assert f"| `{p.request}` | {p.json_type} | {p.allowed} | {default} |" in text, p.request
        assert f"| `{p.flag}` | `{p.env}` | {default}" in text, p.flag
