# SPDX-License-Identifier: Apache-2.0
"""The one settings object, and the one declaration of every pruning parameter.

Every default of mipruner-vllm lives here and nowhere else. Values come from ``MIPRUNER_*``
environment variables (``MIPRUNER_KEEP_RATIO=0.5``) or from the defaults below. Environment
variables are also how the settings reach vLLM's engine and worker processes, which are spawned
with the parent's environment.

:class:`PruningFields` declares each pruning parameter once, as one typed pydantic field: its
name, type, range, default, description and request field (:class:`RequestName`). Everything
else is derived from it: the settings fields (:class:`MiprunerSettings` inherits them), the
resolved parameters of a selection (:class:`mipruner_vllm.params.PruningParams` inherits them),
request validation and the error wording (:mod:`mipruner_vllm.params`), the per-item tensor
encoding (:mod:`mipruner_vllm.integration.fields`), the server's CLI flags, its OpenAPI schema and
the ``docs`` tables, all through the read-only view :data:`PRUNING_PARAMETERS`. Adding a
parameter is one field here plus its use in the selection.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import struct
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

PruningMethod = Literal["mi", "trimtokenator", "similarity", "random", "divprune", "none"]
Aggregation = Literal["max", "mean"]
Normalization = Literal["softmax", "minmax"]
Backend = Literal["auto", "torch", "triton"]

PRUNING_METHODS: tuple[str, ...] = get_args(PruningMethod)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
BACKENDS: tuple[str, ...] = get_args(Backend)

#: The seed range: what ``torch.Generator.manual_seed`` takes and an int64 tensor carries exactly
#: (a video's frames use ``seed + frame``, which stays below manual_seed's 2**64 - 1 limit).
SEED_MAX = 2**63 - 1
#: No media item has more visual tokens than this; it bounds what an absolute budget can be.
KEEP_TOKENS_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class RequestName:
    """Field metadata: a pruning parameter's spelling in a request body and in
    ``mm_processor_kwargs``, which also gives its server flag (``--pruning-method``). It carries a
    prefix where the bare name would clash with an OpenAI field (``seed``, ``method``)."""

    name: str


class PruningFields(BaseModel):
    """THE declaration of the pruning parameters (paper equation numbers in the descriptions).

    One field per parameter; its Python name is the ``select_tokens`` / ``resolve_params``
    argument, the settings field and the ``MIPRUNER_<NAME>`` variable. Field order is the order of
    every derived layer (the per-item tensor layout included).
    """

    keep_ratio: Annotated[float | None, RequestName("keep_ratio")] = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of each media item's visual tokens to keep: the item keeps "
        "clamp(ceil(keep_ratio * N_V), 1, N_V) tokens; 1.0 keeps all (no pruning). "
        "Exclusive with keep_tokens.",
    )
    keep_tokens: Annotated[int | None, RequestName("keep_tokens")] = Field(
        None,
        ge=1,
        le=KEEP_TOKENS_MAX,
        description="Absolute budget per media item: keeps min(keep_tokens, N_V) tokens; "
        "when set it replaces keep_ratio. Exclusive with keep_ratio.",
    )
    method: Annotated[PruningMethod, RequestName("pruning_method")] = Field(
        "mi", description="Selection method ('none' keeps every token)."
    )
    mi_lambda: Annotated[float, RequestName("mi_lambda")] = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="MI-Pruner relevance/redundancy balance, Eq. (22); 1.0 = one-pass top-k by "
        "cross-modal PMI, < 1 adds the greedy redundancy penalty.",
    )
    mi_tau: Annotated[float, RequestName("mi_tau")] = Field(
        0.1, ge=1e-3, le=1e3, description="MI-Pruner temperature tau, Eq. (15) (paper Table 5)."
    )
    aggregation: Annotated[Aggregation, RequestName("mi_aggregation")] = Field(
        "max", description="PMI aggregation: max (Eqs. 19-20) or mean (Eq. 21)."
    )
    normalization: Annotated[Normalization, RequestName("mi_normalization")] = Field(
        "softmax",
        description="Conditional distribution: softmax (Eq. 16) or minmax (App. B.2, Eqs. 52-53).",
    )
    trim_stage1_ratio: Annotated[float, RequestName("trim_stage1_ratio")] = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="TrimTokenator stage-1 (L2 alignment) keep ratio N_1 / N_V.",
    )
    seed: Annotated[int, RequestName("pruning_seed")] = Field(
        0,
        ge=0,
        le=SEED_MAX,
        description="Seed of the 'random' method (the same seed gives the same selection).",
    )
    pruning_detail: Annotated[bool, RequestName("pruning_detail")] = Field(
        False,
        description="Return which visual tokens each media item kept (usage.pruning_detail: "
        "grid, kept indices, the method that ran; docs/kept-patches.md). Such a request shares "
        "no cache entry with another.",
    )
    pruning_detail_scores: Annotated[bool, RequestName("pruning_detail_scores")] = Field(
        False,
        description="Add each media item's per-token ranking scores to usage.pruning_detail "
        "(MI-Pruner: S_cross, Eq. 19 or 21; docs/kept-patches.md); needs pruning_detail.",
    )

    @model_validator(mode="before")
    @classmethod
    def _keep_tokens_replaces_keep_ratio(cls, data: Any) -> Any:
        # An absolute budget given without a ratio is the budget: the default ratio does not
        # stay behind as a second one (both given explicitly is the caller's error to report).
        if isinstance(data, dict) and data.get("keep_tokens") is not None:
            if data.get("keep_ratio") is None:
                return {**data, "keep_ratio": None}
        return data


#: JSON type of each Python kind (error messages, docs tables).
_JSON_TYPES = {bool: "boolean", float: "number", int: "integer", str: "string"}


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A read-only view of one field of :class:`PruningFields`, for the layers derived from it."""

    name: str
    kind: type  # bool, float, int or str
    default: Any
    description: str
    request: str
    choices: tuple[str, ...] | None = None
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    #: ``None`` is a valid value (an unset optional budget).
    optional: bool = False
    #: The declared type (``float | None``, ``Literal[...]``), for the models derived from it.
    annotation: Any = None

    @classmethod
    def of(cls, name: str, info: FieldInfo) -> Parameter:
        """The view of the declared field ``name``."""
        kinds = [a for a in _union_args(info.annotation) if a is not type(None)]
        (kind,) = kinds
        choices = get_args(kind) if get_origin(kind) is Literal else None
        bounds = {
            key: getattr(m, key)
            for m in info.metadata
            for key in ("gt", "ge", "le")
            if isinstance(m, annotated_types.BaseMetadata) and hasattr(m, key)
        }
        (request,) = [m.name for m in info.metadata if isinstance(m, RequestName)]
        return cls(
            name,
            str if choices is not None else kind,
            info.default,
            info.description or "",
            request,
            choices,
            optional=len(kinds) < len(_union_args(info.annotation)),
            annotation=info.annotation,
            **bounds,
        )

    @property
    def flag(self) -> str:
        return "--" + self.request.replace("_", "-")

    @property
    def env(self) -> str:
        return "MIPRUNER_" + self.name.upper()

    @property
    def json_type(self) -> str:
        return _JSON_TYPES[self.kind]

    @property
    def allowed(self) -> str:
        """The allowed values in words, used verbatim in every error message and doc table."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            text = f"an integer >= {self.ge:g}" if self.ge is not None else "an integer"
            return text + (f" and <= {self.le}" if self.le is not None else "")
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}"
        return f"a number in {low}, {self.le:g}]"

    def constraints(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("gt", "ge", "le") if getattr(self, k) is not None}

    def to_slot(self, value: Any) -> int:
        """The value as one exact int64 (the per-item tensor): a choice as its index, a number
        as the bits of its float64, an integer or boolean as itself; ``None`` is the caller's."""
        if self.choices is not None:
            return self.choices.index(value)
        if self.kind is float:
            return int(struct.unpack("<q", struct.pack("<d", float(value)))[0])
        return int(value)

    def from_slot(self, slot: int) -> Any:
        """The inverse of :meth:`to_slot`."""
        if self.choices is not None:
            return self.choices[slot]
        if self.kind is float:
            return float(struct.unpack("<d", struct.pack("<q", slot))[0])
        return self.kind(slot)


def _union_args(annotation: Any) -> tuple[Any, ...]:
    """``float | None`` -> ``(float, NoneType)``; any other annotation -> ``(annotation,)``."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


#: The declaration as a tuple of read-only views, in field order.
PRUNING_PARAMETERS: tuple[Parameter, ...] = tuple(
    Parameter.of(name, info) for name, info in PruningFields.model_fields.items()
)
PARAMETERS_BY_NAME: dict[str, Parameter] = {p.name: p for p in PRUNING_PARAMETERS}
PARAMETERS_BY_REQUEST: dict[str, Parameter] = {p.request: p for p in PRUNING_PARAMETERS}


class MiprunerSettings(BaseSettings, PruningFields):
    """Defaults for every pruning parameter and switch; per-request values override them."""

    model_config = SettingsConfigDict(env_prefix="MIPRUNER_", frozen=True, extra="ignore")

    backend: Backend = Field(
        "auto",
        description="Selection backend: auto (Triton on CUDA tensors, torch otherwise), "
        "torch or triton.",
    )
    skip_version_check: bool = Field(
        False, description="Load the vLLM plugin outside the supported vLLM range."
    )
    debug_dir: str | None = Field(
        None,
        description="If set, vLLM workers append one JSON line per pruned media item "
        "(kept indices, query token ids, parameters) to <debug_dir>/selections.jsonl; "
        "for tests and debugging only.",
    )
    detail_dir: str | None = Field(
        None,
        description="Where workers hand a request's pruning_detail to the API server (one "
        "short-lived file per media item); unset: /dev/shm/mipruner-detail-<uid>. Must be one "
        "directory that every API-server and worker process of the server sees.",
    )
    playground: bool = Field(
        False,
        description="Serve the playground page at /playground (docs/kept-patches.md); off by "
        "default (docs/security.md).",
    )
    encoder_store_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Byte budget of each worker's store of unpruned encoder outputs, keyed "
        "by media content, so a new question about a stored image skips the vision tower; "
        "LRU; 0 disables it.",
    )
    encoder_store_device: Literal["cpu", "device"] = Field(
        "cpu",
        description="Where stored encoder outputs live: cpu (host memory, pinned on CUDA; "
        "the default) or device (the model's accelerator, outside vLLM's memory profile).",
    )
    encoder_tower_tokens: int | None = Field(
        None,
        ge=1,
        description="Most unpruned visual tokens one vision-tower call may carry; unset: "
        "what vLLM's encoder memory profile covered (the safe bound; a larger value can run "
        "out of memory).",
    )

    # -- request policy of the server (docs/security.md) ---------------------------------------
    allowed_media_io_kwargs: list[str] = Field(
        default_factory=list,
        description="Client media_io_kwargs keys the server accepts, as modality.key "
        "(video.num_frames); every other key is refused (media_io_kwargs changes decoding "
        "and so the cost of a request).",
    )
    trust_media_uuids: bool = Field(
        False,
        description="Accept client-chosen media uuids (vLLM uses them as cache keys instead "
        "of the media content). Off by default: on a shared server a uuid would let one "
        "client be answered from, or poison, another client's image.",
    )
    allow_private_media_urls: bool = Field(
        False,
        description="Let the server fetch media URLs on loopback, link-local, private and other "
        "non-public addresses. Off by default (server-side request forgery on a shared endpoint).",
    )
    max_json_depth: int = Field(
        64, ge=8, le=512, description="Deepest nesting of a JSON request body the server accepts."
    )

    @model_validator(mode="after")
    def _scores_need_the_detail(self) -> MiprunerSettings:
        # Otherwise every request that does not itself set pruning_detail would be refused.
        if self.pruning_detail_scores and not self.pruning_detail:
            raise ValueError(
                "MIPRUNER_PRUNING_DETAIL_SCORES=true needs MIPRUNER_PRUNING_DETAIL=true "
                "(the scores are part of usage.pruning_detail)"
            )
        return self


@functools.lru_cache(maxsize=1)
def get_settings() -> MiprunerSettings:
    """The process-wide settings, read once from the environment."""
    return MiprunerSettings()
