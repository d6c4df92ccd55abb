# SPDX-License-Identifier: Apache-2.0
"""The AOT compile check (``python -m mipruner_vllm.kernels --aot sm_80,sm_90``) as a test.

It runs in a subprocess with ``TRITON_INTERPRET`` unset: this session's kernels are interpreted
(conftest.py), and interpreted functions cannot be compiled. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mipruner_vllm.kernels.aot import parse_targets

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_parse_targets():
    assert parse_targets("sm_80,sm_90") == [80, 90]
    assert parse_targets("90a, 80") == [90, 80]
    with pytest.raises(ValueError):
        parse_targets("ampere")


def test_aot_compiles_every_kernel_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's deprecation warning
    proc = subprocess.run(
        [sys.executable, "-m", "mipruner_vllm.kernels", "--aot", "sm_80,sm_90"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if re.match(r"sm_(80|90)\s", line)]
    assert rows and not any("FAILED" in r for r in rows), proc.stdout
    summary = re.search(r"(\d+)/(\d+) configurations OK", proc.stdout)
    assert summary and summary.group(1) == summary.group(2) == str(len(rows)), proc.stdout
    for name in ("mi_cross_logits", "mi_marginal", "mi_score", "topk", "mi_self_lse", "mi_greedy"):
        for arch in ("sm_80", "sm_90"):
            assert any(r.startswith(arch) and name + "[" in r for r in rows), (name, arch)
    # What bf16/fp16 models run must not spill: their builds and the dtype-free kernels ("[-").
    spilled = [r for r in rows if "SPILLS" in r and ("bf16" in r or "fp16" in r or "[-" in r)]
    assert not spilled, proc.stdout


def test_aot_reports_a_bad_target():
    proc = subprocess.run(
        [sys.executable, "-m", "mipruner_vllm.kernels", "--aot", "ampere"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "bad target" in proc.stderr
