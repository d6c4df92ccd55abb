# SPDX-License-Identifier: Apache-2.0
"""lmms-eval 0.7.3's ``import filelock._api`` works under filelock 4 (which vLLM 0.34 needs)."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

import filelock
import pytest

from mipruner_vllm.lmms_eval_compat import filelock_compat

pytestmark = pytest.mark.unit


def test_lmms_eval_loads_the_compat_entry_and_gets_no_model() -> None:
    (entry,) = [e for e in entry_points(group="lmms_eval.models") if e.name.endswith("compat")]
    assert entry.load() is filelock_compat


def test_filelock_api_import_is_restored_for_the_metaclass_filelock_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "filelock._api", raising=False)
    native = importlib.util.find_spec("filelock._api") is not None
    assert filelock_compat() == ()
    api = importlib.import_module("filelock._api")  # what lmms-eval's evaluator imports
    # lmms-eval patches FileLockMeta.__call__: it must be the metaclass of filelock's locks.
    assert isinstance(filelock.FileLock, api.FileLockMeta)
    if not native:  # filelock 4: the alias is filelock._core
        assert api is importlib.import_module("filelock._core")
