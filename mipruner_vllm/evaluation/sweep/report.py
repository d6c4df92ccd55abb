# SPDX-License-Identifier: Apache-2.0
"""The sweep's outputs: the CSV, the plot and the run's metadata."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from mipruner_vllm.evaluation.sweep.rows import SweepRow

__all__ = ["plot", "write_csv", "write_meta"]


def write_csv(rows: Sequence[SweepRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(SweepRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(row).items()})


def _x(row: SweepRow) -> float | None:
    """Where a row goes on the keep-ratio axis: its keep ratio, or the fraction it kept."""
    return row.keep_ratio if row.keep_ratio is not None else row.kept_fraction


def _baseline(acc_ax: Any, base: Sequence[SweepRow]) -> None:
    """The spread of the keep-ratio-1.0 runs: a band, or a line when they agree."""
    if len(base) < 2:
        return
    low, high = min(r.accuracy or 0.0 for r in base), max(r.accuracy or 0.0 for r in base)
    if high > low:
        acc_ax.axhspan(low, high, alpha=0.15, color="grey")
    else:
        acc_ax.axhline(low, linestyle="--", color="grey", linewidth=1)


def _curves(
    scored: Sequence[SweepRow], dataset: str
) -> list[tuple[str, float | None, list[SweepRow]]]:
    """One curve per (method, lambda) of ``dataset``: its pruned points, sorted."""
    curves: dict[tuple[str, float | None], list[SweepRow]] = {}
    for r in scored:
        if r.dataset == dataset and r.keep_ratio != 1.0:
            curves.setdefault((r.pruning_method or "default", r.mi_lambda), []).append(r)
    ordered = sorted(curves.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
    return [(method, lam, points) for (method, lam), points in ordered]


def _draw_curve(acc_ax: Any, ttft_ax: Any, points: Sequence[SweepRow], label: str) -> None:
    acc_ax.plot([_x(r) for r in points], [r.accuracy for r in points], marker="o", label=label)
    ttft = [
        (_x(r), r.ttft_s_p50 if r.ttft_s_p50 is not None else r.server_ttft_s_mean) for r in points
    ]
    ttft = [(x, t) for x, t in ttft if t is not None]
    if ttft:
        ttft_ax.plot([x for x, _ in ttft], [t * 1000 for _, t in ttft], marker="o", label=label)


def _finish_axes(acc_ax: Any, ttft_ax: Any, scored: Sequence[SweepRow]) -> None:
    if scored:
        low = min(r.accuracy or 0.0 for r in scored)
        high = max(r.accuracy or 0.0 for r in scored)
        top = min(1.0, high + 0.05) if high + 0.05 > low else low + 0.05
        acc_ax.set_ylim(max(0.0, low - 0.05), top)
    acc_ax.set_xlabel("keep ratio")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title("accuracy (grey: spread of the two 1.0 runs)")
    ttft_ax.set_xlabel("keep ratio")
    ttft_ax.set_ylabel("TTFT p50 (ms)")
    ttft_ax.set_title("time to first token")
    for ax in (acc_ax, ttft_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)


def plot(rows: Sequence[SweepRow], path: Path, title: str = "") -> None:
    """Accuracy and TTFT against keep ratio; one line per (dataset, method, lambda)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [
        r for r in rows if r.status != "failed" and r.accuracy is not None and _x(r) is not None
    ]
    figure, (acc_ax, ttft_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    datasets = sorted({r.dataset for r in scored})
    for dataset in datasets:
        base = [r for r in scored if r.dataset == dataset and r.keep_ratio == 1.0]
        _baseline(acc_ax, base)
        for method, lam, points in _curves(scored, dataset):
            name = method + ("" if lam is None else f" λ={lam:g}")
            label = name if len(datasets) == 1 else f"{dataset} {name}"
            _draw_curve(acc_ax, ttft_ax, sorted(points + base[:1], key=lambda r: _x(r) or 0), label)
        acc_ax.scatter(
            [1.0] * len(base),
            [r.accuracy for r in base],
            color="black",
            zorder=3,
            label="keep ratio 1.0 (two runs)" if dataset == datasets[0] else None,
        )
    _finish_axes(acc_ax, ttft_ax, scored)
    failed = [r.setting for r in rows if r.status == "failed"]
    caption = title + (f"\nfailed, not plotted: {'; '.join(failed)}" if failed else "")
    if caption:
        figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_meta(
    path: Path,
    *,
    argv: list[str],
    base_url: str,
    root_url: str,
    model: str,
    rows: Sequence[SweepRow],
) -> None:
    """What the CSV alone does not say: the command, the server and client versions, the machine."""
    import platform
    from importlib import metadata

    import httpx

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        server_version = httpx.get(root_url + "/version", timeout=10).json().get("version")
    except (httpx.HTTPError, ValueError):
        server_version = None
    meta = {
        "argv": argv,
        "base_url": base_url,
        "model": model,
        "server_vllm_version": server_version,
        "client": {name: version(name) for name in ("mipruner-vllm", "openai", "lmms-eval")},
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "runs": len(rows),
        "failed": sum(r.status == "failed" for r in rows),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(meta, indent=2) + "\n")
