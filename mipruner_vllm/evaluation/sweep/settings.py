# SPDX-License-Identifier: Apache-2.0
"""The sweep's grid: which request fields every run sends."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mipruner_vllm.config import SEED_MAX
from mipruner_vllm.evaluation.fields import describe

__all__ = ["Setting", "build_settings", "item_fields", "parse_fields", "parse_value"]


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: the request fields every request of the run carries."""

    fields: dict[str, Any]
    repeat: int = 1

    @property
    def label(self) -> str:
        base = describe(self.fields)
        return base if self.repeat == 1 else f"{base} (run {self.repeat})"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.label)[:80]


def parse_value(text: str) -> Any:
    """A command-line value as JSON when it parses (``0.25``, ``64``, ``true``), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_fields(text: str) -> dict[str, Any]:
    """``"keep_ratio=0.25,mi_tau=0.05"`` -> ``{"keep_ratio": 0.25, "mi_tau": 0.05}``."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {part!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def build_settings(
    keep_ratios: Sequence[float],
    methods: Sequence[str] = ("mi",),
    mi_lambdas: Sequence[float] = (),
    keep_tokens: Sequence[int] = (),
    common: dict[str, Any] | None = None,
    extra: Sequence[dict[str, Any]] = (),
) -> list[Setting]:
    """The grid: keep ratio 1.0 twice (the noise floor), then every pruned point, then ``extra``.

    At keep ratio 1.0 every method keeps everything, so the baseline is run once per repeat, not
    once per method. ``mi_lambdas`` multiply only the ``mi`` method (the others have no lambda).
    ``common`` fields are added to every setting (``mi_tau=0.05``); ``extra`` settings are taken
    as given, after ``common``.
    """
    common = dict(common or {})
    settings = [Setting({**common, "keep_ratio": 1.0}, repeat=r) for r in (1, 2)]
    budgets = [{"keep_ratio": float(r)} for r in keep_ratios if float(r) != 1.0]
    budgets += [{"keep_tokens": int(k)} for k in keep_tokens]
    for budget in budgets:
        for method in methods:
            lambdas = mi_lambdas if (method == "mi" and mi_lambdas) else [None]
            for lam in lambdas:
                point = {**common, **budget, "pruning_method": method}
                if lam is not None:
                    point["mi_lambda"] = float(lam)
                settings.append(Setting(point))
    settings += [Setting({**common, **e}) for e in extra]
    return settings


def item_fields(fields: dict[str, Any], item_id: str) -> dict[str, Any]:
    """The request fields of one item of a run.

    A ``random`` setting sends each item its own ``pruning_seed``, derived from the setting's
    seed (0 if unset) and the item id with SHA-256: with one seed for every item, every image of
    the same size would keep the same positions, a fixed pattern rather than a random baseline.
    The derived seed is the same on every run, so a random run is reproducible. Every other
    setting is sent as it is.
    """
    if fields.get("pruning_method") != "random":
        return fields
    base = int(fields.get("pruning_seed", 0))
    digest = hashlib.sha256(f"{base}:{item_id}".encode()).digest()
    return {**fields, "pruning_seed": int.from_bytes(digest[:8], "big") % (SEED_MAX + 1)}
