# SPDX-License-Identifier: Apache-2.0
"""lmms-eval 0.7.3 with filelock 4: the one import it needs, restored before it runs.

lmms-eval 0.7.3 (the newest release) makes ``filelock`` locks singletons per path in
``evaluator.evaluate`` (``_enable_reentrant_filelocks``) by patching ``filelock._api.FileLockMeta``.
filelock 4 moved that module to ``filelock._core`` (same ``FileLockMeta`` and ``BaseFileLock``),
so with filelock 4 every evaluation fails with ``ModuleNotFoundError: filelock._api``, and
vLLM 0.34 requires ``filelock>=4.2.4``. :func:`filelock_compat` points ``filelock._api`` at
``filelock._core`` when, and only when, the first is missing and the second has the class, so
lmms-eval's patch applies to the metaclass that filelock 4 really uses (checked with filelock
4.3.2 and datasets 5.2.0: one lock per path across both lock classes, nested acquire works).

lmms-eval calls every entry of its ``lmms_eval.models`` entry-point group while it builds its
model registry, before any evaluation; :func:`filelock_compat` is one such entry and returns no
model. Drop it once lmms-eval stops importing ``filelock._api``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def filelock_compat() -> tuple[Any, ...]:
    """Alias ``filelock._api`` to filelock 4's ``filelock._core`` if needed; no model manifests."""
    if importlib.util.find_spec("filelock") is None or "filelock._api" in sys.modules:
        return ()
    if importlib.util.find_spec("filelock._api") is not None:
        return ()  # filelock 3: nothing to do
    core = importlib.import_module("filelock._core")
    if hasattr(core, "FileLockMeta"):
        sys.modules["filelock._api"] = core
    return ()
