# SPDX-License-Identifier: Apache-2.0
"""Pruning parameters of one request: validation, defaults and the budget rule.

Both validation models come from the declaration,
:class:`mipruner_vllm.config.PruningFields`, so a range, a default or an error message is
written once:

* :class:`PruningParams`, the resolved parameters of one selection (Python names): the declared
  fields themselves, built by :func:`resolve_params` (the Python entry: ``select_tokens``, the
  vLLM processor);
* :data:`RequestFields`, the request form (request names, every field optional, JSON types
  checked strictly), used by :func:`params_from_request` (the HTTP and ``mm_processor_kwargs``
  entry) and as the server's OpenAPI schema.

This module imports neither torch nor vLLM.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from mipruner_vllm.config import (
    PARAMETERS_BY_NAME,
    PARAMETERS_BY_REQUEST,
    PRUNING_PARAMETERS,
    MiprunerSettings,
    PruningFields,
    get_settings,
)
from mipruner_vllm.errors import PruningParameterError

#: Human-readable allowed values by Python name, used verbatim in every error message.
ALLOWED_VALUES: dict[str, str] = {p.name: p.allowed for p in PRUNING_PARAMETERS}

#: Request field name -> Python name (``pruning_method`` -> ``method``).
REQUEST_FIELDS: dict[str, str] = {p.request: p.name for p in PRUNING_PARAMETERS}
_REQUEST_NAME = {name: request for request, name in REQUEST_FIELDS.items()}
#: A key with one of these prefixes is meant as a pruning field; one not in REQUEST_FIELDS is a
#: typo (``keep_ration``) and is refused rather than forwarded to the Hugging Face processor.
PRUNING_PREFIXES: tuple[str, ...] = ("keep_", "mi_", "pruning_", "trim_")

_NUMBER_FIELDS = tuple(p.name for p in PRUNING_PARAMETERS if p.kind in (int, float))
_INTEGER_FIELDS = frozenset(p.name for p in PRUNING_PARAMETERS if p.kind is int)


def _show(value: Any) -> str:
    # Bounded: a 10**400 seed must not make a 400-digit error message.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class PruningParams(PruningFields):
    """Validated, fully resolved parameters of one selection (one media item).

    The fields are those of the declaration; exactly one of ``keep_ratio`` / ``keep_tokens`` is
    set after :func:`resolve_params`. Frozen and hashable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator(*_NUMBER_FIELDS, mode="before")
    @classmethod
    def _exact_number_kinds(cls, value: Any, info: Any) -> Any:
        # pydantic (lax mode) reads True as 1 / 1.0, and 4.0 or "4" as the integer 4; a boolean is
        # never a valid budget or weight, and only an int is an integer budget or seed.
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        if info.field_name in _INTEGER_FIELDS and not isinstance(value, int | None):
            raise ValueError("not an integer")
        return value

    @property
    def prunes(self) -> bool:
        """False when every token is kept whatever N_V is (the stock-vLLM path)."""
        if self.method == "none":
            return False
        return self.keep_tokens is not None or (
            self.keep_ratio is not None and self.keep_ratio < 1.0
        )

    @property
    def applied_method(self) -> str:
        """The method that really runs: ``"none"`` when nothing is pruned (metrics, usage)."""
        return self.method if self.prunes else "none"

    def n_keep(self, n_visual: int) -> int:
        """The budget rule (:func:`n_keep`) for an item of ``n_visual`` tokens."""
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

    @classmethod
    def from_request_fields(cls, fields: Mapping[str, Any]) -> PruningParams:
        """Rebuild parameters from :func:`request_fields` output that was validated already.

        For the processor, which carries the normalised fields in the (hashed) processor kwargs
        and must not validate them a second time.
        """
        values: dict[str, Any] = {p.name: None for p in PRUNING_PARAMETERS if p.optional}
        values.update({REQUEST_FIELDS[k]: v for k, v in fields.items()})
        return cls.model_construct(**values)


class _RequestFieldsBase(BaseModel):
    """Per-request pruning parameters, accepted at the top level of the generate routes
    (``extra_body`` in the ``openai`` client) and inside ``mm_processor_kwargs``. Unset fields
    take the server's defaults (``mipruner-vllm serve --keep-ratio ...`` or ``MIPRUNER_*``)."""

    # strict: JSON types as JSON means them (true is not a number, 4.0 is not an integer, "0.5"
    # is not a number); NaN and Infinity (which Python's json reads) are refused.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _request_field(name: str) -> Any:
    """The declared field ``name`` in its request form: optional (unset = the server default)."""
    p = PARAMETERS_BY_NAME[name]
    description = f"{p.description} Allowed: {p.allowed}."
    return (p.annotation | None, Field(None, description=description, **p.constraints()))


#: The request form of the parameters (request names), generated from the declaration because
#: its field names are the request spellings; also the OpenAPI schema of the fields. Only
#: validated and described, never read by attribute.
RequestFields: type[BaseModel] = create_model(
    "MIPrunerRequestFields",
    __base__=_RequestFieldsBase,
    __module__=__name__,
    **{p.request: _request_field(p.name) for p in PRUNING_PARAMETERS},
)


def _error(exc: ValidationError, names: Mapping[str, Any]) -> PruningParameterError:
    """The first validation error as a :class:`PruningParameterError` naming the field."""
    error = exc.errors()[0]
    key = str(error["loc"][0]) if error["loc"] else "parameters"
    parameter = names.get(key)
    field = key
    if error["type"] == "extra_forbidden":
        return PruningParameterError(
            field, "unknown pruning field; allowed: " + ", ".join(REQUEST_FIELDS)
        )
    if parameter is None:
        return PruningParameterError(field, f"invalid value {_show(error.get('input'))}")
    value = error.get("input")
    got = _show(value)
    kind = _json_kind(value)
    if kind != parameter.json_type and not (parameter.json_type == "number" and kind == "integer"):
        got += f" (a JSON {kind}, expected a JSON {parameter.json_type})"
    return PruningParameterError(field, f"must be {parameter.allowed}, got {got}")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _resolve(given: Mapping[str, Any], settings: MiprunerSettings | None) -> PruningParams:
    """Fill unset Python-named values from the settings, apply the budget rules, validate."""
    settings = settings or get_settings()
    keep_ratio, keep_tokens = given.get("keep_ratio"), given.get("keep_tokens")
    if keep_ratio is not None and keep_tokens is not None:
        raise PruningParameterError(
            "keep_tokens", "give either keep_ratio or keep_tokens, not both"
        )
    values = {
        p.name: given[p.name] if given.get(p.name) is not None else getattr(settings, p.name)
        for p in PRUNING_PARAMETERS
    }
    if keep_ratio is None and keep_tokens is None:
        # The settings' default budget: keep_tokens replaces keep_ratio when it is set.
        values["keep_ratio"] = None if settings.keep_tokens is not None else settings.keep_ratio
    else:
        values["keep_ratio"], values["keep_tokens"] = keep_ratio, keep_tokens
    if values["keep_ratio"] is None and values["keep_tokens"] is None:
        raise PruningParameterError("keep_ratio", "the settings give no budget: set one of both")
    try:
        params = PruningParams(**values)
    except ValidationError as exc:
        raise _error(exc, PARAMETERS_BY_NAME) from None
    if params.pruning_detail_scores and not params.pruning_detail:
        # The scores travel inside usage.pruning_detail: asking for them alone would be
        # silently ignored, so it is refused (docs/kept-patches.md).
        raise PruningParameterError(
            "pruning_detail_scores",
            "must be false unless pruning_detail is true (the scores are part of the detail)",
        )
    if params.method == "none":
        if (keep_ratio is not None and keep_ratio < 1.0) or keep_tokens is not None:
            raise PruningParameterError(
                "method",
                "'none' keeps every token; leave keep_ratio/keep_tokens unset (or keep_ratio=1)",
            )
        # A default budget means nothing next to 'none': store the budget it really has, so the
        # parameters round-trip through request_fields / params_from_request unchanged.
        params = params.model_copy(update={"keep_ratio": 1.0, "keep_tokens": None})
    return params


def parameter_signature(
    *leading: inspect.Parameter, trailing: tuple[inspect.Parameter, ...] = ()
) -> inspect.Signature:
    """The keyword-only signature of the pruning parameters (for ``help()`` and IDEs)."""
    params = [
        inspect.Parameter(
            p.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=p.annotation | None
        )
        for p in PRUNING_PARAMETERS
    ]
    return inspect.Signature([*leading, *params, *trailing])


_Function = TypeVar("_Function", bound=Callable[..., Any])


def takes_pruning_parameters(
    *leading: inspect.Parameter, trailing: tuple[inspect.Parameter, ...] = ()
) -> Callable[[_Function], _Function]:
    """Decorator: give a ``**params`` function the signature of the declared parameters.

    ``inspect.signature`` (so ``help()`` and IDEs) then lists every parameter by name with its
    type, derived from the declaration. A function keeps extra attributes in its ``__dict__``,
    where ``inspect`` looks for ``__signature__``.
    """

    def apply(function: _Function) -> _Function:
        function.__dict__["__signature__"] = parameter_signature(*leading, trailing=trailing)
        return function

    return apply


@takes_pruning_parameters(
    trailing=(inspect.Parameter("settings", inspect.Parameter.KEYWORD_ONLY, default=None),)
)
def resolve_params(*, settings: MiprunerSettings | None = None, **values: Any) -> PruningParams:
    """Validate user arguments (Python names) and fill the missing ones from the settings.

    Raises :class:`PruningParameterError` naming the argument and its allowed values. Giving both
    budgets is an error; giving neither uses the settings' default budget. ``method="none"``
    keeps every token, so an explicit budget below everything with it is an error too. ``None``
    means "use the default". The keyword arguments are those of
    :data:`~mipruner_vllm.config.PRUNING_PARAMETERS` (see ``inspect.signature``).
    """
    unknown = sorted(set(values) - set(PARAMETERS_BY_NAME))
    if unknown:
        raise TypeError(f"resolve_params() got an unexpected keyword argument {unknown[0]!r}")
    return _resolve(values, settings)


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
            raise PruningParameterError(
                key, "unknown pruning field; allowed: " + ", ".join(REQUEST_FIELDS)
            )
        else:
            rest[key] = value
    return pruning, rest


def params_from_request(
    values: Mapping[str, Any], settings: MiprunerSettings | None = None
) -> PruningParams:
    """Validate request fields (request names, JSON types strictly) and resolve the defaults.

    Unknown keys are errors, and errors name the field as the request spells it
    (``pruning_method``, not ``method``). ``None`` values mean "use the default".
    """
    try:
        fields = RequestFields.model_validate(dict(values))
    except ValidationError as exc:
        raise _error(exc, PARAMETERS_BY_REQUEST) from None
    given = {REQUEST_FIELDS[k]: v for k, v in fields.model_dump(exclude_none=True).items()}
    try:
        return _resolve(given, settings)
    except PruningParameterError as exc:
        raise PruningParameterError(_REQUEST_NAME.get(exc.field, exc.field), exc.message) from None


def request_fields(params: PruningParams) -> dict[str, Any]:
    """The normalised request-field form of ``params``: sorted keys, floats as float, no Nones.

    Equal settings give equal dicts (and so equal multimodal hashes in vLLM).
    """
    values = {}
    for p in PRUNING_PARAMETERS:
        value = getattr(params, p.name)
        if value is not None:
            values[p.request] = float(value) if p.kind is float else value
    return dict(sorted(values.items()))


def n_keep(
    n_visual: int, *, keep_ratio: float | None = None, keep_tokens: int | None = None
) -> int:
    """THE budget rule, the one function both processor and model use.

    ``clamp(ceil(keep_ratio * N_V), 1, N_V)`` or ``clamp(keep_tokens, 1, N_V)``. The ratio is read
    as the shortest decimal that round-trips its float (``0.07`` is 7/100, so 0.07 x 100 = 7 and
    not 8 from binary rounding), so the count is what a person computing by hand expects.
    """
    if isinstance(n_visual, bool) or not isinstance(n_visual, int) or n_visual < 1:
        raise PruningParameterError("n_visual", f"must be an integer >= 1, got {n_visual!r}")
    if (keep_ratio is None) == (keep_tokens is None):
        raise PruningParameterError(
            "keep_ratio", "exactly one of keep_ratio / keep_tokens is required"
        )
    if keep_tokens is not None:
        if isinstance(keep_tokens, bool) or not isinstance(keep_tokens, int) or keep_tokens < 1:
            raise PruningParameterError(
                "keep_tokens", f"must be {ALLOWED_VALUES['keep_tokens']}, got {keep_tokens!r}"
            )
        return min(keep_tokens, n_visual)
    assert keep_ratio is not None
    if isinstance(keep_ratio, bool) or not math.isfinite(keep_ratio) or not 0.0 < keep_ratio <= 1.0:
        raise PruningParameterError(
            "keep_ratio", f"must be {ALLOWED_VALUES['keep_ratio']}, got {keep_ratio!r}"
        )
    exact = Fraction(repr(float(keep_ratio))) * n_visual
    return max(1, min(n_visual, math.ceil(exact)))
