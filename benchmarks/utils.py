# SPDX-License-Identifier: Apache-2.0
"""Shared benchmark plumbing: timing (do_bench on GPU, a wall-clock timer on CPU) and CSV rows
that carry the machine, library versions, git commit and time of the run."""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"
QUANTILES = (0.5, 0.2, 0.8)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cores = os.cpu_count() or 0
    return f"{platform.processor() or platform.machine()} ({cores} cores visible, torch threads {torch.get_num_threads()})"


def utc_timestamp() -> str:
    """The time of a measurement, UTC, to the second (ISO 8601)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "missing"


@dataclass
class BenchmarkRow:
    """One measurement; the CSV header is these field names."""

    benchmark: str
    provider: str
    model: str
    n_visual: int
    dim: int
    n_text: int
    keep_ratio: float
    dtype: str
    ms_p50: float
    ms_p20: float
    ms_p80: float
    note: str = ""
    device: str = ""
    torch: str = field(default_factory=lambda: torch.__version__)
    triton: str = field(default_factory=triton_version)
    commit: str = field(default_factory=git_commit)
    timestamp: str = field(default_factory=utc_timestamp)


def append_rows(path: Path, rows: list) -> None:
    """Append dataclass rows to ``path`` (accumulated, never overwritten); header on first write."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(rows[0])])
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def time_ms(
    fn: Callable[[], object], device: str, repeats: int = 5, warmup: int = 1
) -> tuple[float, float, float]:
    """``(p50, p20, p80)`` milliseconds: ``triton.testing.do_bench`` on GPU, a CPU timer otherwise."""
    if device == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=list(QUANTILES)))  # type: ignore[return-value]
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=10, method="inclusive")
    return statistics.median(samples), q[1], q[7]
