# SPDX-License-Identifier: Apache-2.0
"""The budget rule (DESIGN.md 2.4), the settings object and the request-field mapping."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
from pydantic import ValidationError

from mipruner_vllm import PruningParameterError, get_settings, n_keep, resolve_params
from mipruner_vllm.params import REQUEST_FIELDS, params_from_request, request_fields

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "n_visual,kwargs,expected",
    [
        (1024, {"keep_ratio": 0.25}, 256),
        (1024, {"keep_ratio": 1.0}, 1024),
        (576, {"keep_ratio": 0.1}, 58),  # ceil(57.6)
        (100, {"keep_ratio": 0.07}, 7),  # decimal semantics: not 8 from 7.000000000000001
        (100, {"keep_ratio": 0.29}, 29),
        (10, {"keep_ratio": 0.01}, 1),  # clamped up to 1
        (3, {"keep_ratio": 0.5}, 2),
        (16, {"keep_tokens": 4}, 4),
        (16, {"keep_tokens": 64}, 16),  # clamped down to N_V
        (1, {"keep_tokens": 1}, 1),
    ],
)
def test_budget_rule(n_visual, kwargs, expected):
    assert n_keep(n_visual, **kwargs) == expected


def test_budget_rule_rejects_bad_arguments():
    with pytest.raises(PruningParameterError, match="n_visual"):
        n_keep(0, keep_ratio=0.5)
    with pytest.raises(PruningParameterError, match="exactly one"):
        n_keep(10)
    with pytest.raises(PruningParameterError, match="exactly one"):
        n_keep(10, keep_ratio=0.5, keep_tokens=2)
    with pytest.raises(PruningParameterError, match="keep_ratio"):
        n_keep(10, keep_ratio=0.0)
    with pytest.raises(PruningParameterError, match="keep_tokens"):
        n_keep(10, keep_tokens=0)


def test_params_n_keep_and_prunes():
    assert resolve_params(keep_ratio=0.5).n_keep(9) == 5
    assert resolve_params(keep_tokens=3).n_keep(9) == 3
    assert resolve_params(method="none").n_keep(9) == 9
    assert resolve_params(keep_ratio=0.5).prunes
    assert resolve_params(keep_tokens=10_000).prunes  # may prune, depending on N_V
    assert not resolve_params().prunes  # default keep_ratio 1.0
    assert not resolve_params(method="none").prunes


@pytest.mark.parametrize(
    ("budget", "frames", "per_frame", "expected"),
    [
        ({"keep_ratio": 0.25}, 2, 16, [4, 4]),  # n_keep(32) = 8
        ({"keep_tokens": 5}, 2, 16, [3, 2]),  # the remainder goes to the earlier frames
        ({"keep_ratio": 0.3}, 4, 10, [3, 3, 3, 3]),  # n_keep(40) = 12
        ({"keep_ratio": 0.35}, 4, 10, [4, 4, 3, 3]),  # n_keep(40) = 14
        ({"keep_tokens": 2}, 4, 10, [1, 1, 1, 1]),  # every frame keeps at least one token
        ({"keep_tokens": 1000}, 3, 6, [6, 6, 6]),
        ({"keep_ratio": 1.0}, 3, 6, [6, 6, 6]),
        ({"keep_ratio": 0.5}, 1, 7, [4]),  # one frame: the plain budget rule
    ],
)
def test_n_keep_per_frame_spreads_the_video_budget(budget, frames, per_frame, expected):
    params = resolve_params(**budget)
    shares = params.n_keep_per_frame(frames, per_frame)
    assert shares == expected
    assert sum(shares) == max(params.n_keep(frames * per_frame), frames)
    assert max(shares) - min(shares) <= 1 and all(1 <= s <= per_frame for s in shares)


def test_n_keep_per_frame_rejects_bad_frames():
    with pytest.raises(PruningParameterError, match="frames"):
        resolve_params(keep_ratio=0.5).n_keep_per_frame(0, 16)


def test_settings_defaults():
    settings = get_settings()
    assert settings.keep_ratio == 1.0 and settings.keep_tokens is None
    assert (settings.method, settings.mi_lambda, settings.mi_tau) == ("mi", 1.0, 0.1)
    assert (settings.aggregation, settings.normalization, settings.trim_stage1_ratio) == (
        "max",
        "softmax",
        0.8,
    )
    assert settings.backend == "auto"


def test_settings_from_environment_become_defaults(monkeypatch):
    monkeypatch.setenv("MIPRUNER_KEEP_RATIO", "0.5")
    monkeypatch.setenv("MIPRUNER_MI_LAMBDA", "0.25")
    monkeypatch.setenv("MIPRUNER_METHOD", "trimtokenator")
    get_settings.cache_clear()
    params = resolve_params()
    assert (params.keep_ratio, params.mi_lambda, params.method) == (0.5, 0.25, "trimtokenator")
    # An explicit argument still wins over the environment.
    assert resolve_params(keep_tokens=4).keep_tokens == 4
    assert resolve_params(keep_tokens=4).keep_ratio is None


def test_settings_keep_tokens_default(monkeypatch):
    monkeypatch.setenv("MIPRUNER_KEEP_TOKENS", "64")
    get_settings.cache_clear()
    assert resolve_params().keep_tokens == 64
    assert resolve_params(keep_ratio=0.5).keep_tokens is None


@pytest.mark.parametrize("name,value", [("KEEP_RATIO", "2"), ("MI_TAU", "0"), ("METHOD", "magic")])
def test_bad_environment_fails_at_load(monkeypatch, name, value):
    monkeypatch.setenv(f"MIPRUNER_{name}", value)
    get_settings.cache_clear()
    with pytest.raises(ValidationError, match=name.lower()):
        get_settings()


def test_request_fields_roundtrip_and_normalisation():
    params = params_from_request({"keep_ratio": 0.5, "pruning_method": "mi", "mi_lambda": 1})
    fields = request_fields(params)
    assert list(fields) == sorted(fields)
    assert fields["mi_lambda"] == 1.0 and isinstance(fields["mi_lambda"], float)
    # Key order and int/float spelling do not change the normalised form.
    other = params_from_request({"mi_lambda": 1.0, "pruning_method": "mi", "keep_ratio": 0.5})
    assert request_fields(other) == fields
    assert params_from_request(fields) == params
    assert set(fields) <= set(REQUEST_FIELDS)


def test_request_errors_use_request_names():
    with pytest.raises(PruningParameterError, match="^pruning_method: must be one of") as info:
        params_from_request({"pruning_method": "magic"})
    assert info.value.field == "pruning_method"
    with pytest.raises(PruningParameterError, match="^mi_aggregation:"):
        params_from_request({"mi_aggregation": "sum"})
    with pytest.raises(PruningParameterError, match="^max_pixels: unknown pruning field"):
        params_from_request({"max_pixels": 100})
    with pytest.raises(PruningParameterError, match="^keep_tokens: give either"):
        params_from_request({"keep_tokens": 3, "keep_ratio": 0.5})


def test_none_method_with_a_default_budget_round_trips(monkeypatch):
    # A server default budget below 1 must not make 'none' requests invalid downstream.
    monkeypatch.setenv("MIPRUNER_KEEP_RATIO", "0.5")
    get_settings.cache_clear()
    params = params_from_request({"pruning_method": "none"})
    assert (params.keep_ratio, params.keep_tokens, params.n_keep(10)) == (1.0, None, 10)
    assert params_from_request(request_fields(params)) == params


def test_split_pruning_fields_refuses_misspelt_keys():
    from mipruner_vllm.params import split_pruning_fields

    pruning, rest = split_pruning_fields({"keep_ratio": 0.5, "max_pixels": 100, "min_pixels": 4})
    assert pruning == {"keep_ratio": 0.5} and rest == {"max_pixels": 100, "min_pixels": 4}
    for typo in ("keep_ration", "mi_gamma", "pruning_mode", "trim_ratio"):
        with pytest.raises(PruningParameterError, match=f"^{typo}: unknown pruning field"):
            split_pruning_fields({typo: 1})


def _exception_classes() -> dict[str, list[str]]:
    """Every class of the installed packages' sources that is an exception: name -> base names
    (read from the source, so the server's vLLM-importing modules need not be imported)."""
    root = Path(__file__).resolve().parents[2]
    bases: dict[str, list[str]] = {}
    for folder in ("mipruner_vllm", "server", "kernels"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases[node.name] = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]

    def is_exception(name: str) -> bool:
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            return True
        return any(is_exception(b) for b in bases.get(name, []))

    return {name: found for name, found in bases.items() if is_exception(name)}


def test_every_exception_of_the_project_has_the_one_root():
    classes = _exception_classes()
    assert {"RequestRefused", "MediaURLRefused", "DatasetError"} <= set(classes)

    def rooted(name: str) -> bool:
        return name == "MiprunerError" or any(rooted(b) for b in classes.get(name, []))

    assert [name for name in classes if not rooted(name)] == []
