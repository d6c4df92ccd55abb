# SPDX-License-Identifier: Apache-2.0
"""Pruning parameters of one request: validation, defaults and the budget rule (DESIGN.md 2.4).

Everything that takes pruning arguments from a user (``select_tokens``, the vLLM processor, the
server) goes through :func:`resolve_params`, so the allowed values and the error wording are
defined once, here. This module imports neither torch nor vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mipruner_vllm.config import (
    AGGREGATIONS,
    NORMALIZATIONS,
    PRUNING_METHODS,
    Aggregation,
    MiprunerSettings,
    Normalization,
    PruningMethod,
    get_settings,
)
from mipruner_vllm.errors import PruningParameterError

#: Human-readable allowed values, used verbatim in every error message (and by the server).
ALLOWED_VALUES: dict[str, str] = {
    "keep_ratio": "a number in (0, 1]",
    "keep_tokens": "an integer >= 1",
    "method": "one of " + ", ".join(PRUNING_METHODS),
    "mi_lambda": "a number in [0, 1]",
    "mi_tau": "a number in [0.001, 1000]",
    "aggregation": "one of " + ", ".join(AGGREGATIONS),
    "normalization": "one of " + ", ".join(NORMALIZATIONS),
    "trim_stage1_ratio": "a number in (0, 1]",
    "seed": "an integer >= 0",
}


class PruningParams(BaseModel):
    """Validated, fully resolved parameters of one selection (one media item).

    Exactly one of ``keep_ratio`` / ``keep_tokens`` is set after :func:`resolve_params`.
    Instances are frozen and hashable; equal settings compare (and hash) equal.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, allow_inf_nan=False)

    keep_ratio: float | None = Field(None, gt=0.0, le=1.0)
    keep_tokens: int | None = Field(None, ge=1, strict=True)
    method: PruningMethod = "mi"
    mi_lambda: float = Field(1.0, ge=0.0, le=1.0)
    mi_tau: float = Field(0.1, ge=1e-3, le=1e3)
    aggregation: Aggregation = "max"
    normalization: Normalization = "softmax"
    trim_stage1_ratio: float = Field(0.8, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, strict=True)

    @property
    def prunes(self) -> bool:
        """False when every token is kept whatever N_V is (the stock-vLLM path)."""
        if self.method == "none":
            return False
        return self.keep_tokens is not None or (self.keep_ratio is not None and self.keep_ratio < 1.0)

    @property
    def applied_method(self) -> str:
        """The method that really runs: ``"none"`` when nothing is pruned (metrics, usage)."""
        return self.method if self.prunes else "none"

    def n_keep(self, n_visual: int) -> int:
        """The budget rule of DESIGN.md 2.4 for an item of ``n_visual`` tokens."""
        if self.method == "none":
            return n_visual
        return n_keep(n_visual, keep_ratio=self.keep_ratio, keep_tokens=self.keep_tokens)

    def n_keep_per_frame(self, frames: int, tokens_per_frame: int) -> list[int]:
        """The budget rule for a video whose frames each need their own placeholder count.

        Qwen3-VL puts a timestamp before every frame of a video, so the number of kept tokens of
        each frame is fixed in the prompt before the encoder runs. The video is still one item:
        it gets ``n_keep(frames * tokens_per_frame)`` as a whole, spread over the frames as evenly
        as possible, earlier frames taking the remainder. Every frame keeps at least one token
        (its timestamp never introduces an empty frame), so a budget below ``frames`` becomes
        ``frames``.
        """
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise PruningParameterError("frames", f"must be an integer >= 1, got {frames!r}")
        total = self.n_keep(frames * tokens_per_frame)
        base, extra = divmod(total, frames)
        return [max(1, base + (frame < extra)) for frame in range(frames)]


def _reject_bool(field: str, value: Any) -> None:
    # pydantic (lax mode) reads True as 1 / 1.0; a JSON boolean is never a valid budget or weight.
    if isinstance(value, bool):
        raise PruningParameterError(field, f"must be {ALLOWED_VALUES[field]}, got {value!r}")


def resolve_params(
    *,
    keep_ratio: float | None = None,
    keep_tokens: int | None = None,
    method: str | None = None,
    mi_lambda: float | None = None,
    mi_tau: float | None = None,
    aggregation: str | None = None,
    normalization: str | None = None,
    trim_stage1_ratio: float | None = None,
    seed: int | None = None,
    settings: MiprunerSettings | None = None,
) -> PruningParams:
    """Validate user arguments and fill the missing ones from the settings object.

    Raises :class:`PruningParameterError` naming the argument and its allowed values. Giving both
    budgets is an error; giving neither uses the settings' default budget. ``method="none"``
    keeps every token, so an explicit budget below everything with it is an error too.
    """
    settings = settings or get_settings()
    given = {
        "keep_ratio": keep_ratio,
        "keep_tokens": keep_tokens,
        "method": method,
        "mi_lambda": mi_lambda,
        "mi_tau": mi_tau,
        "aggregation": aggregation,
        "normalization": normalization,
        "trim_stage1_ratio": trim_stage1_ratio,
        "seed": seed,
    }
    for field, value in given.items():
        if value is not None and field not in ("method", "aggregation", "normalization"):
            _reject_bool(field, value)
    if keep_ratio is not None and keep_tokens is not None:
        raise PruningParameterError(
            "keep_tokens", "give either keep_ratio or keep_tokens, not both"
        )
    if keep_ratio is None and keep_tokens is None:
        if settings.keep_tokens is not None:
            budget: dict[str, Any] = {"keep_tokens": settings.keep_tokens}
        else:
            budget = {"keep_ratio": settings.keep_ratio}
    else:
        budget = {"keep_ratio": keep_ratio} if keep_ratio is not None else {"keep_tokens": keep_tokens}
    values = {
        **budget,
        "method": method if method is not None else settings.method,
        "mi_lambda": mi_lambda if mi_lambda is not None else settings.mi_lambda,
        "mi_tau": mi_tau if mi_tau is not None else settings.mi_tau,
        "aggregation": aggregation if aggregation is not None else settings.aggregation,
        "normalization": normalization if normalization is not None else settings.normalization,
        "trim_stage1_ratio": trim_stage1_ratio if trim_stage1_ratio is not None else settings.trim_stage1_ratio,
        "seed": seed if seed is not None else settings.random_seed,
    }
    try:
        params = PruningParams(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "parameters"
        raise PruningParameterError(
            field, f"must be {ALLOWED_VALUES.get(field, 'valid')}, got {error.get('input')!r}"
        ) from None
    if params.method == "none":
        if (keep_ratio is not None and keep_ratio < 1.0) or keep_tokens is not None:
            raise PruningParameterError(
                "method", "'none' keeps every token; leave keep_ratio/keep_tokens unset (or keep_ratio=1)"
            )
        # A default budget means nothing next to 'none': store the budget it really has, so the
        # parameters round-trip through request_fields / params_from_request unchanged.
        params = params.model_copy(update={"keep_ratio": 1.0, "keep_tokens": None})
    return params


#: Names of the pruning fields in a request (HTTP body, ``mm_processor_kwargs``) and the
#: :func:`resolve_params` argument each maps to. The request names carry a prefix where the bare
#: name would be ambiguous next to other OpenAI/vLLM fields (``pruning_method``, not ``method``).
REQUEST_FIELDS: dict[str, str] = {
    "keep_ratio": "keep_ratio",
    "keep_tokens": "keep_tokens",
    "pruning_method": "method",
    "mi_lambda": "mi_lambda",
    "mi_tau": "mi_tau",
    "mi_aggregation": "aggregation",
    "mi_normalization": "normalization",
    "trim_stage1_ratio": "trim_stage1_ratio",
    "pruning_seed": "seed",
}
_REQUEST_NAME = {arg: field for field, arg in REQUEST_FIELDS.items()}
#: A key with one of these prefixes is meant as a pruning field; one not in REQUEST_FIELDS is a
#: typo (``keep_ration``) and is refused rather than forwarded to the Hugging Face processor.
PRUNING_PREFIXES: tuple[str, ...] = ("keep_", "mi_", "pruning_", "trim_")


def split_pruning_fields(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``values`` into (pruning request fields, everything else).

    Raises :class:`PruningParameterError` for a key that looks like a pruning field (see
    :data:`PRUNING_PREFIXES`) but is not one, so a misspelt budget is never silently ignored.
    """
    pruning, rest = {}, {}
    for key, value in values.items():
        if key in REQUEST_FIELDS:
            pruning[key] = value
        elif key.startswith(PRUNING_PREFIXES):
            raise PruningParameterError(key, "unknown pruning field; allowed: " + ", ".join(REQUEST_FIELDS))
        else:
            rest[key] = value
    return pruning, rest


def params_from_request(values: Mapping[str, Any], settings: MiprunerSettings | None = None) -> PruningParams:
    """:func:`resolve_params` for request fields (see :data:`REQUEST_FIELDS`).

    Unknown keys are errors, and errors name the field as the request spells it
    (``pruning_method``, not ``method``). ``None`` values mean "use the default".
    """
    unknown = sorted(set(values) - set(REQUEST_FIELDS))
    if unknown:
        raise PruningParameterError(
            unknown[0], "unknown pruning field; allowed: " + ", ".join(REQUEST_FIELDS)
        )
    try:
        return resolve_params(**{REQUEST_FIELDS[k]: v for k, v in values.items()}, settings=settings)
    except PruningParameterError as exc:
        field = _REQUEST_NAME.get(exc.field, exc.field)
        raise PruningParameterError(field, exc.message) from None


def request_fields(params: PruningParams) -> dict[str, Any]:
    """The normalised request-field form of ``params``: sorted keys, floats as float, no Nones.

    Equal settings give equal dicts (and so equal multimodal hashes in vLLM).
    """
    values = {
        "keep_ratio": None if params.keep_ratio is None else float(params.keep_ratio),
        "keep_tokens": params.keep_tokens,
        "pruning_method": params.method,
        "mi_lambda": float(params.mi_lambda),
        "mi_tau": float(params.mi_tau),
        "mi_aggregation": params.aggregation,
        "mi_normalization": params.normalization,
        "trim_stage1_ratio": float(params.trim_stage1_ratio),
        "pruning_seed": params.seed,
    }
    return {k: values[k] for k in sorted(values) if values[k] is not None}


def n_keep(n_visual: int, *, keep_ratio: float | None = None, keep_tokens: int | None = None) -> int:
    """Budget rule (DESIGN.md 2.4), the one function both processor and model use.

    ``clamp(ceil(keep_ratio * N_V), 1, N_V)`` or ``clamp(keep_tokens, 1, N_V)``. The ratio is read
    as the shortest decimal that round-trips its float (``0.07`` is 7/100, so 0.07 x 100 = 7 and
    not 8 from binary rounding), so the count is what a person computing by hand expects.
    """
    if isinstance(n_visual, bool) or not isinstance(n_visual, int) or n_visual < 1:
        raise PruningParameterError("n_visual", f"must be an integer >= 1, got {n_visual!r}")
    if (keep_ratio is None) == (keep_tokens is None):
        raise PruningParameterError("keep_ratio", "exactly one of keep_ratio / keep_tokens is required")
    if keep_tokens is not None:
        if isinstance(keep_tokens, bool) or not isinstance(keep_tokens, int) or keep_tokens < 1:
            raise PruningParameterError("keep_tokens", f"must be {ALLOWED_VALUES['keep_tokens']}, got {keep_tokens!r}")
        return min(keep_tokens, n_visual)
    assert keep_ratio is not None
    if isinstance(keep_ratio, bool) or not math.isfinite(keep_ratio) or not 0.0 < keep_ratio <= 1.0:
        raise PruningParameterError("keep_ratio", f"must be {ALLOWED_VALUES['keep_ratio']}, got {keep_ratio!r}")
    exact = Fraction(repr(float(keep_ratio))) * n_visual
    return max(1, min(n_visual, math.ceil(exact)))
