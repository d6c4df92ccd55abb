# SPDX-License-Identifier: Apache-2.0
"""The one settings object: every default of mipruner-vllm lives here and nowhere else.

Values come from ``MIPRUNER_*`` environment variables (``MIPRUNER_KEEP_RATIO=0.5``) or from the
defaults below. Environment variables are also how the settings reach vLLM's engine and worker
processes, which are spawned with the parent's environment.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PruningMethod = Literal["mi", "trimtokenator", "similarity", "random", "divprune", "none"]
Aggregation = Literal["max", "mean"]
Normalization = Literal["softmax", "minmax"]
Backend = Literal["auto", "torch", "triton"]

PRUNING_METHODS: tuple[str, ...] = PruningMethod.__args__  # type: ignore[attr-defined]
AGGREGATIONS: tuple[str, ...] = Aggregation.__args__  # type: ignore[attr-defined]
NORMALIZATIONS: tuple[str, ...] = Normalization.__args__  # type: ignore[attr-defined]
BACKENDS: tuple[str, ...] = Backend.__args__  # type: ignore[attr-defined]


class MiprunerSettings(BaseSettings):
    """Defaults for every pruning parameter and switch; per-request values override them."""

    model_config = SettingsConfigDict(env_prefix="MIPRUNER_", frozen=True, extra="ignore")

    keep_ratio: float = Field(
        1.0, gt=0.0, le=1.0, description="Fraction of each media item's visual tokens to keep; 1.0 keeps all (no pruning)."
    )
    keep_tokens: int | None = Field(
        None, ge=1, description="Absolute per-item budget; when set it replaces keep_ratio as the default."
    )
    method: PruningMethod = Field("mi", description="Selection method (DESIGN.md section 2).")
    mi_lambda: float = Field(
        1.0, ge=0.0, le=1.0, description="MI-Pruner relevance/redundancy balance, Eq. (22); 1.0 = one-pass top-k."
    )
    mi_tau: float = Field(0.1, ge=1e-3, le=1e3, description="MI-Pruner temperature tau, Eq. (15) (paper Table 5).")
    aggregation: Aggregation = Field("max", description="PMI aggregation: max (Eqs. 19-20) or mean (Eq. 21).")
    normalization: Normalization = Field(
        "softmax", description="Conditional distribution: softmax (Eq. 16) or minmax (App. B.2, Eqs. 52-53)."
    )
    trim_stage1_ratio: float = Field(
        0.8, gt=0.0, le=1.0, description="TrimTokenator stage-1 (L2 alignment) keep ratio N_1 / N_V."
    )
    random_seed: int = Field(0, ge=0, description="Seed of the `random` baseline when a request gives none.")
    backend: Backend = Field(
        "auto", description="Selection backend: auto (Triton on CUDA tensors, torch otherwise), torch or triton."
    )
    skip_version_check: bool = Field(False, description="Load the vLLM plugin outside the supported vLLM range.")
    debug_dir: str | None = Field(
        None,
        description="If set, vLLM workers append one JSON line per pruned media item (kept indices, "
        "query token ids, parameters) to <debug_dir>/selections.jsonl; for tests and debugging only.",
    )
    encoder_store_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Byte budget of each worker's store of unpruned encoder outputs, keyed by media "
        "content, so a new question about a stored image skips the vision tower; LRU; 0 disables it.",
    )
    encoder_store_device: Literal["cpu", "device"] = Field(
        "cpu",
        description="Where stored encoder outputs live: cpu (host memory, pinned on CUDA; the default) "
        "or device (the model's accelerator, outside vLLM's memory profile).",
    )
    encoder_tower_tokens: int | None = Field(
        None,
        ge=1,
        description="Most unpruned visual tokens one vision-tower call may carry; unset: what vLLM's "
        "encoder memory profile covered (the safe bound; a larger value can run out of memory).",
    )


@functools.lru_cache(maxsize=1)
def get_settings() -> MiprunerSettings:
    """The process-wide settings, read once from the environment."""
    return MiprunerSettings()
