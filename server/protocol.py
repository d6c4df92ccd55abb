# SPDX-License-Identifier: Apache-2.0
"""The HTTP contract of the pruning layer: request fields, usage fields, the error body.

These models describe what the layer adds to vLLM's OpenAI API. They feed ``/openapi.json``
(:func:`openapi_with_pruning`) and the docs; the values themselves are validated by
:func:`mipruner_vllm.params.params_from_request`, the one place that defines the allowed values.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mipruner_vllm.config import PRUNING_METHODS, Aggregation, Normalization, PruningMethod
from mipruner_vllm.params import ALLOWED_VALUES, REQUEST_FIELDS

#: JSON type each request field must have. JSON booleans are never numbers here, and
#: ``keep_tokens`` / ``pruning_seed`` must be JSON integers (``4.0`` is refused).
FIELD_TYPES: dict[str, str] = {
    "keep_ratio": "number",
    "keep_tokens": "integer",
    "pruning_method": "string",
    "mi_lambda": "number",
    "mi_tau": "number",
    "mi_aggregation": "string",
    "mi_normalization": "string",
    "trim_stage1_ratio": "number",
    "pruning_seed": "integer",
}
assert set(FIELD_TYPES) == set(REQUEST_FIELDS), "FIELD_TYPES must cover params.REQUEST_FIELDS"



class PruningRequestFields(BaseModel):
    """Per-request pruning parameters, accepted at the top level of ``/v1/chat/completions`` and
    ``/v1/completions`` bodies (``extra_body`` in the ``openai`` client). Unset fields take the
    server's defaults (``mipruner-vllm serve --keep-ratio ...`` or ``MIPRUNER_*``)."""

    model_config = ConfigDict(extra="forbid")

    keep_ratio: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Fraction of each media item's visual tokens to keep, in (0, 1]. The item keeps "
        "clamp(ceil(keep_ratio * N_V), 1, N_V) tokens. 1.0 keeps everything. Exclusive with keep_tokens.",
    )
    keep_tokens: int | None = Field(
        None, ge=1,
        description="Absolute budget per media item (an integer >= 1): keeps min(keep_tokens, N_V). "
        "Exclusive with keep_ratio.",
    )
    pruning_method: PruningMethod | None = Field(
        None,
        description="Selection method: " + ", ".join(PRUNING_METHODS) + " ('none' keeps every token).",
    )
    mi_lambda: float | None = Field(
        None, ge=0.0, le=1.0,
        description="MI-Pruner relevance/redundancy balance in [0, 1]; 1.0 = one-pass top-k by "
        "cross-modal PMI, < 1 adds the greedy redundancy penalty.",
    )
    mi_tau: float | None = Field(None, ge=1e-3, le=1e3, description="MI-Pruner temperature tau in [0.001, 1000].")
    mi_aggregation: Aggregation | None = Field(None, description="PMI aggregation: max or mean.")
    mi_normalization: Normalization | None = Field(
        None,
        description="Conditional distribution: softmax or minmax.",
    )
    trim_stage1_ratio: float | None = Field(
        None, gt=0.0, le=1.0, description="TrimTokenator stage-1 keep ratio in (0, 1]."
    )
    pruning_seed: int | None = Field(None, ge=0, description="Seed of the 'random' method (an integer >= 0).")


class PruningUsage(BaseModel):
    """Fields added to the response's ``usage`` (also in the final usage chunk of a stream)."""

    visual_tokens: int = Field(
        description="Visual tokens of the request's media items before pruning (sum of N_V).",
    )
    visual_tokens_kept: int = Field(
        description="Visual tokens kept and sent to the LLM (sum of N_keep); included in prompt_tokens.",
    )


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """OpenAI-style error body, the same shape as vLLM's own errors."""

    error: ErrorInfo


def bad_request(param: str, message: str) -> ErrorResponse:
    """The 400 body for a refused pruning field: names the field and what it allows."""
    return ErrorResponse(
        error=ErrorInfo(message=f"Invalid request field '{param}': {message}", type="BadRequestError",
                        param=param, code=400)
    )


def allowed(field: str) -> str:
    """Allowed values of a request field, in the wording of :data:`params.ALLOWED_VALUES`."""
    return ALLOWED_VALUES[REQUEST_FIELDS[field]]


#: Request schemas that get the pruning fields in ``/openapi.json``.
OPENAPI_REQUEST_SCHEMAS = ("ChatCompletionRequest", "CompletionRequest")
#: Operations whose description gets the pruning note (vLLM's routes declare no response model,
#: so the usage fields are documented here and in the ``MIPrunerUsage`` component).
OPENAPI_OPERATIONS = ("/v1/chat/completions", "/v1/completions")
OPENAPI_NOTE = (
    "\n\n**MI-Pruner.** Optional top-level fields `keep_ratio` | `keep_tokens`, `pruning_method`, `mi_lambda`, "
    "`mi_tau` (and `mi_aggregation`, `mi_normalization`, `trim_stage1_ratio`, `pruning_seed`) set this "
    "request's visual-token budget (schema `MIPrunerRequestFields`); unset fields take the server defaults. "
    "A bad value is a 400 naming the field. `usage` gains `visual_tokens` (before pruning) and "
    "`visual_tokens_kept` (schema `MIPrunerUsage`), also in the final usage chunk of a stream."
)


def openapi_with_pruning(schema: dict[str, Any]) -> dict[str, Any]:
    """Return ``schema`` (vLLM's OpenAPI document) with the pruning fields documented.

    The fields are added as properties of the request bodies (they are top-level JSON fields),
    so generated clients and ``/docs`` show them with types, ranges and descriptions.
    """
    schema = copy.deepcopy(schema)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    request_schema = PruningRequestFields.model_json_schema()
    for name in OPENAPI_REQUEST_SCHEMAS:
        if name in schemas:
            schemas[name].setdefault("properties", {}).update(copy.deepcopy(request_schema["properties"]))
    schemas["MIPrunerRequestFields"] = request_schema
    schemas["MIPrunerUsage"] = PruningUsage.model_json_schema()
    for path in OPENAPI_OPERATIONS:
        operation = schema.get("paths", {}).get(path, {}).get("post")
        if operation is not None:
            operation["description"] = (operation.get("description") or "") + OPENAPI_NOTE
    return schema
