# SPDX-License-Identifier: Apache-2.0
"""The HTTP contract of the pruning layer: request fields, usage fields, the error body.

These models describe what the layer adds to vLLM's OpenAI API and feed ``/openapi.json``
(:func:`openapi_with_pruning`). The request fields' schema is the validation model itself
(:class:`mipruner_vllm.params.RequestFields`, derived from the parameter declaration), so the
documented ranges are the enforced ones.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, Field

from mipruner_vllm.params import REQUEST_FIELDS, RequestFields


class ItemDetail(BaseModel):
    """One media item of ``usage.pruning_detail`` (requests with ``pruning_detail: true``)."""

    modality: str
    grid: list[int] | None = Field(
        description="(t, h, w) of the item's visual tokens in LLM tokens after the spatial "
        "merge; null where they form no single grid (LLaVA-NeXT: indices are flat)."
    )
    visual_tokens: int
    visual_tokens_kept: int
    method: str | None = Field(
        description="What ran: none (nothing dropped), uniform_stride (a fallback), or the "
        "requested method."
    )
    fallback: str | None = Field(description="The fallback reason, when one ran.")
    kept: list[int] | None = Field(
        description="Kept token indices, ascending, row-major in grid; null when omitted."
    )
    omitted: str | None = Field(None, description="Why kept is null.")
    scores: list[float] | None = Field(
        None,
        description="Only with pruning_detail_scores: the score the method ranks each visual "
        "token by, one per token in kept's row-major order (4 significant digits); null when "
        "omitted or the method has none.",
    )
    score: str | None = Field(None, description="What the scores are (with the equation).")
    scores_omitted: str | None = Field(None, description="Why scores is null.")


class PruningUsage(BaseModel):
    """Fields added to the response's ``usage`` (also in the final usage chunk of a stream)."""

    visual_tokens: int = Field(
        description="Visual tokens of the request's media items before pruning (sum of N_V).",
    )
    visual_tokens_kept: int = Field(
        description=(
            "Visual tokens kept and sent to the LLM (sum of N_keep); included in prompt_tokens."
        ),
    )
    pruning_detail: list[ItemDetail] | None = Field(
        None,
        description="Per media item in prompt order, which tokens the worker kept; only when "
        "the request set pruning_detail (a stream: in its final usage chunk).",
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
        error=ErrorInfo(
            message=f"Invalid request field '{param}': {message}",
            type="BadRequestError",
            param=param,
            code=400,
        )
    )


#: Request schemas that get the pruning fields in ``/openapi.json``.
OPENAPI_REQUEST_SCHEMAS = (
    "ChatCompletionRequest",
    "CompletionRequest",
    "BatchChatCompletionRequest",
    "ResponsesRequest",
)
#: Operations whose description gets the pruning note (vLLM's routes declare no response model,
#: so the usage fields are documented here and in the ``MIPrunerUsage`` component).
OPENAPI_OPERATIONS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/chat/completions/batch",
    "/v1/responses",
    "/invocations",
)
OPENAPI_NOTE = (
    "\n\n**MI-Pruner.** Optional top-level fields "
    + ", ".join(f"`{f}`" for f in REQUEST_FIELDS)
    + " set this "
    "request's visual-token budget (schema `MIPrunerRequestFields`); unset fields take the server "
    "defaults. A bad value is a 400 naming the field. `usage` gains `visual_tokens` (before "
    "pruning) and "
    "`visual_tokens_kept` (schema `MIPrunerUsage`), also in the final usage chunk of a stream."
)


def openapi_with_pruning(schema: dict[str, Any]) -> dict[str, Any]:
    """Return ``schema`` (vLLM's OpenAPI document) with the pruning fields documented.

    The fields are added as properties of the request bodies (they are top-level JSON fields),
    so generated clients and ``/docs`` show them with types, ranges and descriptions.
    """
    schema = copy.deepcopy(schema)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    request_schema = RequestFields.model_json_schema()
    for name in OPENAPI_REQUEST_SCHEMAS:
        if name in schemas:
            schemas[name].setdefault("properties", {}).update(
                copy.deepcopy(request_schema["properties"])
            )
    schemas["MIPrunerRequestFields"] = request_schema
    schemas["MIPrunerUsage"] = PruningUsage.model_json_schema()
    for path in OPENAPI_OPERATIONS:
        operation = schema.get("paths", {}).get(path, {}).get("post")
        if operation is not None:
            operation["description"] = (operation.get("description") or "") + OPENAPI_NOTE
    return schema
