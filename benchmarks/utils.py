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
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cores = os.cpu_count() or 0
    return (
        f"{platform.processor() or platform.machine()} "
        f"({cores} cores visible, torch threads {torch.get_num_threads()})"
    )


def machine_facts() -> dict[str, object]:
    """The machine a figure was measured on, for a result file's header."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def utc_timestamp() -> str:
    """The time of a measurement, UTC, to the second (ISO 8601)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "missing"


def driver_version() -> str:
    """The NVIDIA driver version (``nvidia-smi``), or why it is unknown."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


#: Peak DRAM bandwidth (bytes/s) by device-name substring, most specific first: the fallback
#: when the device properties do not carry the memory clock and bus width.
PEAK_BANDWIDTH_BY_NAME = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
)


def peak_bandwidth() -> tuple[float | None, str]:
    """``(bytes/s, source)`` of the current CUDA device's peak DRAM bandwidth.

    From the device properties where torch exposes them (2 transfers per memory clock x bus
    width: HBM and GDDR are double data rate), else from :data:`PEAK_BANDWIDTH_BY_NAME`.
    """
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if clock_khz and bus_bits:
        return (
            2.0 * clock_khz * 1e3 * bus_bits / 8,
            "device properties (2 x memory clock x bus width)",
        )
    for key, peak in PEAK_BANDWIDTH_BY_NAME:
        if key in props.name:
            return peak, f"data sheet value for {key}"
    return None, f"unknown for {props.name}"


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
    #: Items per call (a packed varlen batch for the kernels, a loop for torch).
    batch: int = 1
    mi_lambda: float = 1.0
    #: Compulsory traffic of one call: V and T read once, in bytes (empty where not computed).
    bytes_moved: int | str = ""
    #: bytes_moved / p50 time, and that as a share of the device's peak DRAM bandwidth.
    achieved_gbps: float | str = ""
    peak_share: float | str = ""
    driver: str = ""
    torch: str = field(default_factory=lambda: torch.__version__)
    triton: str = field(default_factory=triton_version)
    commit: str = field(default_factory=git_commit)
    timestamp: str = field(default_factory=utc_timestamp)


def append_rows(path: Path, rows: list) -> None:
    """Append dataclass rows to ``path`` (accumulated, never overwritten); header on first write.

    Refuses to append to a CSV whose header has other columns (it would misalign every row).
    """
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [fl.name for fl in fields(rows[0])]
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != names:
            raise ValueError(
                f"{path} has columns {header}, these rows have {names}: write to another file"
            )
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def time_ms(
    fn: Callable[[], object], device: str, repeats: int = 5, warmup: int = 1
) -> tuple[float, float, float]:
    """``(p50, p20, p80)`` milliseconds: ``triton.testing.do_bench`` on GPU, a CPU timer
    otherwise."""
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


def image_url(seed: int, side: int = 112) -> str:
    """A seeded random ``side`` x ``side`` RGB image as a PNG data URL (no network)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def video_url(seed: int, frames: int = 4, side: int = 112) -> str:
    """A seeded random ``frames``-frame, 2 fps MP4 as a data URL (OpenCV, no network)."""
    import base64
    import tempfile

    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (side, side))
        for _ in range(frames):
            writer.write(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        writer.release()
        data = Path(path).read_bytes()
    return "data:video/mp4;base64," + base64.b64encode(data).decode()
