# SPDX-License-Identifier: Apache-2.0
"""benchmarks/plot_bench_serve.py reads vLLM ``bench serve`` result files (the committed ones from
a real run) and writes the TTFT / throughput plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "plot_bench_serve.py"
RESULTS = sorted((ROOT / "benchmarks" / "results" / "bench_serve").glob("*.json"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


def test_plots_the_committed_bench_serve_results(tmp_path):
    assert len(RESULTS) >= 2, "benchmarks/results/bench_serve/ holds the results of a real run"
    out = tmp_path / "plot.png"
    proc = _run(*map(str, RESULTS), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratios = {json.loads(p.read_text())["keep_ratio"] for p in RESULTS}
    rows = [line for line in proc.stdout.splitlines()[1:] if not line.startswith("wrote")]
    assert len(rows) == len(RESULTS) and {float(r.split()[1]) for r in rows} == {
        float(x) for x in ratios
    }


def test_a_result_without_keep_ratio_is_refused(tmp_path):
    result = json.loads(RESULTS[0].read_text())
    del result["keep_ratio"]
    bad = tmp_path / "no_ratio.json"
    bad.write_text(json.dumps(result))
    proc = _run(str(bad), "--out", str(tmp_path / "x.png"))
    assert proc.returncode != 0 and "--metadata keep_ratio=R" in proc.stderr
    assert not (tmp_path / "x.png").exists()
