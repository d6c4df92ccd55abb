# SPDX-License-Identifier: Apache-2.0
"""Kernel tests: native Triton on a CUDA machine, Triton's CPU interpreter everywhere else.

Triton decides interpreted vs compiled when ``@triton.jit`` decorates a kernel, i.e. when
``mipruner_vllm.kernels.mi_select`` / ``mi_greedy`` are first imported (triton 3.9 reads
``TRITON_INTERPRET`` then, not at ``import triton``). So this conftest, at import time and before
any test module imports a kernel, sets the variable, imports (or reloads) the kernel modules and
then restores the environment: a whole-suite run must not leak the interpreter into other test
directories or into the vLLM engine processes they spawn. The autouse ``_interpreter`` fixture
sets it again for each kernel test, because the dispatch checks it at call time. On a machine
with CUDA nothing is changed and the same parity tests run natively on CUDA tensors.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

NATIVE = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not NATIVE:
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for _name in ("mipruner_vllm.kernels.mi_select", "mipruner_vllm.kernels.mi_greedy"):
            if _name in sys.modules:
                importlib.reload(sys.modules[_name])
            else:
                importlib.import_module(_name)
    finally:
        if _saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _saved

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def device() -> str:
    """Where kernel inputs live: CUDA when native, CPU under the interpreter."""
    return "cuda" if NATIVE else "cpu"


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    """TRITON_INTERPRET=1 for the duration of each kernel test only (CPU machines)."""
    if not NATIVE:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_settings(clean_settings):
    """Each test sees the settings of its own environment (tests/conftest.py)."""
