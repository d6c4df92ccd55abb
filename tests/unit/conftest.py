# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_settings(clean_settings):
    """Each unit test sees the settings of its own environment, not a cached earlier one."""


@pytest.fixture()
def own_detail_dir(tmp_path, monkeypatch):
    """A pruning-detail directory of the test's own (``MIPRUNER_DETAIL_DIR``)."""
    from mipruner_vllm.config import get_settings

    monkeypatch.setenv("MIPRUNER_DETAIL_DIR", str(tmp_path / "detail"))
    get_settings.cache_clear()
    yield tmp_path / "detail"
    get_settings.cache_clear()
