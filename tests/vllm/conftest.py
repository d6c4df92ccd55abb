# SPDX-License-Identifier: Apache-2.0
"""Shared set-up of the real-vLLM plugin tests (CPU, tiny demo checkpoints).

Engines take 20-40 s to start on two cores, so each test module starts as few as it can and
shares them through module-scoped fixtures; at most one engine runs at a time. The environment
below must be in place before the first engine spawns its engine-core and worker processes, which
inherit it (the plugin itself reaches them through its ``vllm.general_plugins`` entry point of the
editable install).
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest.importorskip("vllm")


def make_llm(
    checkpoint: str,
    *,
    plugin: bool,
    debug_dir: Path | None = None,
    settings: dict[str, str] | None = None,
    **overrides: Any,
) -> Any:
    """An ``LLM`` for a tiny checkpoint, with the MI-Pruner architecture when ``plugin``.

    ``settings`` are ``MIPRUNER_*`` variables (without the prefix) for this engine's processes
    only; they are in the environment while the engine starts (its processes are forked then)
    and removed afterwards, so the next engine starts from the defaults.
    """
    from vllm import LLM

    from mipruner_vllm.config import get_settings
    from mipruner_vllm.integration.launch import engine_overrides

    if debug_dir is not None:
        os.environ["MIPRUNER_DEBUG_DIR"] = str(debug_dir)
    else:
        os.environ.pop("MIPRUNER_DEBUG_DIR", None)
    extra = {f"MIPRUNER_{k.upper()}": v for k, v in (settings or {}).items()}
    os.environ.update(extra)
    # vLLM forks its engine processes: they inherit this process's cached settings object.
    get_settings.cache_clear()
    kwargs: dict[str, Any] = dict(
        model=checkpoint,
        max_model_len=1024,
        enforce_eager=True,
        seed=0,
        enable_prefix_caching=True,
        block_size=32,
        # Small steps: longer prompts (video, two images) are prefilled in chunks, so chunked
        # prefill through pruned media is exercised too.
        max_num_batched_tokens=32,
    )
    if plugin:
        kwargs.update(engine_overrides(checkpoint))
    kwargs.update(overrides)
    try:
        return LLM(**kwargs)
    finally:
        for key in extra:
            os.environ.pop(key, None)
        get_settings.cache_clear()


def shutdown(llm: Any) -> None:
    """Stop an engine's processes now, so the next module's engine has the cores."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # pragma: no cover - best effort; the processes also die with the parent
        pass
    del llm
    gc.collect()


def read_records(debug_dir: Path) -> list[dict[str, Any]]:
    """Selections the workers appended (``MIPRUNER_DEBUG_DIR``), in order."""
    path = debug_dir / "selections.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RecordTail:
    """The debug records appended since construction (or the last :meth:`new` call)."""

    def __init__(self, debug_dir: Path) -> None:
        self.debug_dir = debug_dir
        self.seen = len(read_records(debug_dir))

    def new(self) -> list[dict[str, Any]]:
        records = read_records(self.debug_dir)
        fresh, self.seen = records[self.seen :], len(records)
        return fresh


@pytest.fixture(scope="session")
def engine_tools() -> Any:
    """The helpers above, for test modules (``--import-mode=importlib`` cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        make_llm=make_llm, shutdown=shutdown, read_records=read_records, RecordTail=RecordTail
    )
