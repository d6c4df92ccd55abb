# SPDX-License-Identifier: Apache-2.0
"""The pruning fields an evaluation client adds to every request, from tool arguments.

Evaluation tools hand their model options over as loosely typed values (lmms-eval's
``--model_args keep_ratio=1`` arrives as the integer 1, ``pruning_seed=3`` as 3,
``pruning_method=mi`` as a string). :func:`pruning_fields` turns them into the JSON types the
server expects and checks them with the same rules the server applies
(:func:`mipruner_vllm.params.params_from_request`), so a bad value stops the run before any
request is sent: lmms-eval would otherwise retry each rejected request and score it as a wrong
answer, which reads as an accuracy drop rather than an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mipruner_vllm.config import PRUNING_PARAMETERS
from mipruner_vllm.params import REQUEST_FIELDS, params_from_request, split_pruning_fields

#: Request fields whose JSON type is a number (an integer from a tool's parser is widened):
#: the float parameters of the one declaration, ``config.PRUNING_PARAMETERS``.
NUMBER_FIELDS = frozenset(p.request for p in PRUNING_PARAMETERS if p.kind is float)


def split_model_args(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split tool arguments into (pruning request fields, the tool's own arguments).

    A key that looks like a pruning field but is not one (``keep_ration``) raises
    :class:`~mipruner_vllm.errors.PruningParameterError` rather than reaching the tool, which
    would drop it with a warning and run unpruned.
    """
    fields, rest = split_pruning_fields(values)
    return pruning_fields(fields), rest


def pruning_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validated request fields in their JSON types, ``None`` values dropped, keys sorted.

    The values are sent as given (after widening integers to numbers where the field is a
    number), not as the resolved parameters: the server applies its own defaults to the fields
    a setting leaves out.
    """
    fields: dict[str, Any] = {}
    for key in sorted(values):
        value = values[key]
        if value is None:
            continue
        if key in NUMBER_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        fields[key] = value
    params_from_request(fields)  # raises PruningParameterError naming the field
    return fields


def describe(fields: Mapping[str, Any]) -> str:
    """A short stable label of a setting: ``keep_ratio=0.25,pruning_method=mi``."""
    order = {name: i for i, name in enumerate(REQUEST_FIELDS)}
    keys = sorted(fields, key=lambda k: (order.get(k, len(order)), k))
    return ",".join(f"{k}={fields[k]}" for k in keys) or "server-default"
