# SPDX-License-Identifier: Apache-2.0
"""The one settings object, and the one declaration of every pruning parameter.

Every default of mipruner-vllm lives here and nowhere else. Values come from ``MIPRUNER_*``
environment variables (``MIPRUNER_KEEP_RATIO=0.5``) or from the defaults below. Environment
variables are also how the settings reach vLLM's engine and worker processes, which are spawned
with the parent's environment.

:data:`PRUNING_PARAMETERS` declares each pruning parameter once: its name, type, range, default,
description and request field. Everything else is derived from it: the settings fields below,
request validation and the error wording (:mod:`mipruner_vllm.params`), the per-item tensor
encoding (:mod:`mipruner_vllm.integration.fields`), the server's CLI flags, its OpenAPI schema and
the ``docs`` tables. Adding a parameter is one entry here plus its use in the selection.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Literal

from pydantic import Field, create_model, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

PruningMethod = Literal["mi", "trimtokenator", "similarity", "random", "divprune", "none"]
Aggregation = Literal["max", "mean"]
Normalization = Literal["softmax", "minmax"]
Backend = Literal["auto", "torch", "triton"]

PRUNING_METHODS: tuple[str, ...] = PruningMethod.__args__  # type: ignore[attr-defined]
AGGREGATIONS: tuple[str, ...] = Aggregation.__args__  # type: ignore[attr-defined]
NORMALIZATIONS: tuple[str, ...] = Normalization.__args__  # type: ignore[attr-defined]
BACKENDS: tuple[str, ...] = Backend.__args__  # type: ignore[attr-defined]

#: The seed range: what ``torch.Generator.manual_seed`` takes and an int64 tensor carries exactly
#: (a video's frames use ``seed + frame``, which stays below manual_seed's 2**64 - 1 limit).
SEED_MAX = 2**63 - 1
#: No media item has more visual tokens than this; it bounds what an absolute budget can be.
KEEP_TOKENS_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One pruning parameter, declared once.

    ``name`` is the Python spelling (``PruningParams``, ``select_tokens``, the settings field, the
    ``MIPRUNER_<NAME>`` variable). ``request`` is the spelling in a request body and in
    ``mm_processor_kwargs``, and gives the server flag (``--pruning-method``): it carries a prefix
    where the bare name would clash with an OpenAI field (``seed``, ``method``).
    """

    name: str
    kind: type  # float, int, str or bool
    default: Any
    description: str
    request: str
    choices: tuple[str, ...] | None = None
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    #: ``None`` is a valid value (an unset optional budget).
    optional: bool = False
    #: Older settings / environment names still accepted (documented as deprecated).
    deprecated_names: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.request.replace("_", "-")

    @property
    def env(self) -> str:
        return "MIPRUNER_" + self.name.upper()

    @property
    def json_type(self) -> str:
        return {float: "number", int: "integer", str: "string", bool: "boolean"}[self.kind]

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

    def annotation(self) -> Any:
        base: Any = Literal[self.choices] if self.choices is not None else self.kind  # type: ignore[valid-type]
        return base | None if self.optional else base


#: THE declaration of the pruning parameters (paper equation numbers in the descriptions).
PRUNING_PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "keep_ratio",
        float,
        1.0,
        request="keep_ratio",
        gt=0.0,
        le=1.0,
        description="Fraction of each media item's visual tokens to keep: the item keeps "
        "clamp(ceil(keep_ratio * N_V), 1, N_V) tokens; 1.0 keeps all (no pruning). "
        "Exclusive with keep_tokens.",
    ),
    Parameter(
        "keep_tokens",
        int,
        None,
        request="keep_tokens",
        ge=1,
        le=KEEP_TOKENS_MAX,
        optional=True,
        description="Absolute budget per media item: keeps min(keep_tokens, N_V) tokens; "
        "when set it replaces keep_ratio. Exclusive with keep_ratio.",
    ),
    Parameter(
        "method",
        str,
        "mi",
        request="pruning_method",
        choices=PRUNING_METHODS,
        description="Selection method ('none' keeps every token).",
    ),
    Parameter(
        "mi_lambda",
        float,
        1.0,
        request="mi_lambda",
        ge=0.0,
        le=1.0,
        description="MI-Pruner relevance/redundancy balance, Eq. (22); 1.0 = one-pass top-k by "
        "cross-modal PMI, < 1 adds the greedy redundancy penalty.",
    ),
    Parameter(
        "mi_tau",
        float,
        0.1,
        request="mi_tau",
        ge=1e-3,
        le=1e3,
        description="MI-Pruner temperature tau, Eq. (15) (paper Table 5).",
    ),
    Parameter(
        "aggregation",
        str,
        "max",
        request="mi_aggregation",
        choices=AGGREGATIONS,
        description="PMI aggregation: max (Eqs. 19-20) or mean (Eq. 21).",
    ),
    Parameter(
        "normalization",
        str,
        "softmax",
        request="mi_normalization",
        choices=NORMALIZATIONS,
        description="Conditional distribution: softmax (Eq. 16) or minmax (App. B.2, Eqs. 52-53).",
    ),
    Parameter(
        "trim_stage1_ratio",
        float,
        0.8,
        request="trim_stage1_ratio",
        gt=0.0,
        le=1.0,
        description="TrimTokenator stage-1 (L2 alignment) keep ratio N_1 / N_V.",
    ),
    Parameter(
        "seed",
        int,
        0,
        request="pruning_seed",
        ge=0,
        le=SEED_MAX,
        deprecated_names=("random_seed",),
        description="Seed of the 'random' method (the same seed gives the same selection).",
    ),
    Parameter(
        "pruning_detail",
        bool,
        False,
        request="pruning_detail",
        description="Return which visual tokens each media item kept (usage.pruning_detail: "
        "grid, kept indices, the method that ran; docs/kept-patches.md). Such a request shares "
        "no cache entry with another.",
    ),
)
PARAMETERS_BY_NAME: dict[str, Parameter] = {p.name: p for p in PRUNING_PARAMETERS}
PARAMETERS_BY_REQUEST: dict[str, Parameter] = {p.request: p for p in PRUNING_PARAMETERS}


def _settings_fields() -> dict[str, Any]:
    return {
        p.name: (p.annotation(), Field(p.default, description=p.description, **p.constraints()))
        for p in PRUNING_PARAMETERS
    }


#: The settings fields of :data:`PRUNING_PARAMETERS`, generated so a range or default is
#: written once.
_PruningDefaults: type[BaseSettings] = create_model(  # type: ignore[call-overload]
    "_PruningDefaults", __base__=BaseSettings, **_settings_fields()
)


class MiprunerSettings(_PruningDefaults):
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

    @model_validator(mode="before")
    @classmethod
    def _deprecated_names(cls, data: Any) -> Any:
        # Old spellings (documented as deprecated): the random_seed setting / MIPRUNER_RANDOM_SEED.
        if not isinstance(data, dict):
            return data
        environ = {k.upper(): v for k, v in os.environ.items()}
        for p in PRUNING_PARAMETERS:
            for old in p.deprecated_names:
                if old in data:  # a keyword argument: it beats the environment, like any other
                    data[p.name] = data.pop(old)
                elif (
                    p.name not in data
                    and f"MIPRUNER_{old.upper()}" in environ
                    and p.env not in environ
                ):
                    logger.warning("MIPRUNER_%s is deprecated; use %s", old.upper(), p.env)
                    data[p.name] = environ[f"MIPRUNER_{old.upper()}"]
        return data

    @property
    def random_seed(self) -> int:
        """Deprecated name of :attr:`seed`."""
        return self.seed  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1)
def get_settings() -> MiprunerSettings:
    """The process-wide settings, read once from the environment."""
    return MiprunerSettings()
