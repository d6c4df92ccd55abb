# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The float64 transcription of Algorithm 1 is a plain helper module beside the tests; with
# --import-mode=importlib pytest does not put test directories on sys.path, so do it here.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _fresh_settings(clean_settings):
    """Each unit test sees the settings of its own environment, not a cached earlier one."""
