# SPDX-License-Identifier: Apache-2.0
"""Fixtures shared by every test directory: clean settings and the tiny demo checkpoints.

``demo_model_dir(arch, size="tiny")`` returns the path of a demo checkpoint built by
:func:`mipruner_vllm.demo_model.ensure_demo_model`. Checkpoints are built at most once per test
session into one session-wide cache directory (a pytest temp dir), so the unit, env and vLLM
tests share them. Set ``MIPRUNER_TEST_DEMO_CACHE=/some/dir`` to keep them across sessions
(the builder version is part of each directory name, so a stale build is never reused).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session-wide cache directory for demo checkpoints."""
    keep = os.environ.get("MIPRUNER_TEST_DEMO_CACHE")
    if keep:
        path = Path(keep).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("demo-models")


@pytest.fixture(scope="session")
def demo_model_dir(demo_cache_dir: Path) -> Callable[..., Path]:
    """``demo_model_dir(arch, size="tiny") -> Path``: a built demo checkpoint (cached)."""
    from mipruner_vllm.demo_model import ensure_demo_model

    def get(arch: str, size: str = "tiny") -> Path:
        return ensure_demo_model(arch, size, cache_dir=demo_cache_dir)

    return get


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch):
    """The test sees settings built from its own environment: no MIPRUNER_* leaks in or out."""
    from mipruner_vllm.config import get_settings

    for name in list(os.environ):
        if name.startswith("MIPRUNER_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# Set per engine by tests/vllm, and a cache location: not settings a test can leak.
_ENV_LEAK_EXEMPT = {"MIPRUNER_DEBUG_DIR", "MIPRUNER_CACHE_DIR", "MIPRUNER_TEST_DEMO_CACHE"}


def _settings_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith("MIPRUNER_") and k not in _ENV_LEAK_EXEMPT
    }


@pytest.fixture(autouse=True)
def _no_settings_leak():
    """Fail the test that leaves MIPRUNER_* settings behind: later tests (and the vLLM engines
    they spawn, which inherit the environment) would silently run with its defaults."""
    before = _settings_env()
    yield
    after = _settings_env()
    if after != before:
        pytest.fail(f"test leaked MIPRUNER_* environment: before {before}, after {after}")
