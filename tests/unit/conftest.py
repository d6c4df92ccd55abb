# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_settings(clean_settings):
    """Each unit test sees the settings of its own environment, not a cached earlier one."""
