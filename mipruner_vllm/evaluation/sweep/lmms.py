# SPDX-License-Identifier: Apache-2.0
"""lmms-eval runs: a ``lmms-eval --model mipruner`` subprocess per setting and task."""

from __future__ import annotations

import glob
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mipruner_vllm.evaluation.sweep.rows import SweepRow, make_row
from mipruner_vllm.evaluation.sweep.serverside import server_ttft_mean, server_ttft_totals
from mipruner_vllm.evaluation.sweep.settings import Setting

__all__ = ["lmms_eval_command", "read_lmms_eval_results", "run_lmms_eval_setting"]


def lmms_eval_command(
    base_url: str, model: str, task: str, setting: Setting, run_dir: Path, extra_args: Sequence[str]
) -> list[str]:
    """The ``lmms-eval`` command line of one run (the same one docs/evaluation.md shows)."""
    model_args = [f"base_url={base_url}", f"model={model}"]
    model_args += [f"{k}={v}" for k, v in setting.fields.items()]
    model_args.append(f"usage_report={run_dir / 'usage.json'}")
    return [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "mipruner",
        "--model_args",
        ",".join(model_args),
        "--tasks",
        task,
        "--output_path",
        str(run_dir / "lmms-eval"),
        "--log_samples",
        *extra_args,
    ]


def read_lmms_eval_results(run_dir: Path, task: str, metric: str | None) -> tuple[float, str, int]:
    """(score, metric name, samples) of ``task`` from the run's ``*_results.json``.

    Raises ``RuntimeError`` when the run left no results, no entry for the task, or no numeric
    metric: lmms-eval can log an error and still exit 0.
    """
    files = sorted(glob.glob(str(run_dir / "lmms-eval" / "**" / "*_results.json"), recursive=True))
    if not files:
        raise RuntimeError("lmms-eval wrote no *_results.json")
    results = json.loads(Path(files[-1]).read_text())
    scores = results.get("results", {}).get(task)
    if not scores:
        raise RuntimeError(f"lmms-eval results have no entry for task {task!r}")
    samples = int((results.get("n-samples", {}).get(task) or {}).get("effective", 0))
    candidates = {
        k: v
        for k, v in scores.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and "stderr" not in k
        and k != "alias"
    }
    if metric is not None:
        chosen = [k for k in candidates if k == metric or k.split(",")[0] == metric]
        if not chosen:
            raise RuntimeError(
                f"task {task!r} has no metric {metric!r} (has {', '.join(candidates)})"
            )
    else:
        chosen = list(candidates)
    if not chosen:
        raise RuntimeError(f"task {task!r} has no numeric metric")
    value = float(candidates[chosen[0]])
    if not math.isfinite(value):
        raise RuntimeError(f"task {task!r} metric {chosen[0]} is {value}")
    return value, chosen[0], samples


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _last_logged_error(log: Path) -> str:
    """The last error lmms-eval logged (it logs a crashed evaluation and may still exit 0)."""
    if not log.is_file():
        return ""
    lines = [_ANSI.sub("", line) for line in log.read_text(errors="replace").splitlines()]
    errors = [
        line for line in lines if "| ERROR" in line or line.startswith(("Traceback", "Error"))
    ]
    if not errors:
        return ""
    return errors[-1].split(" - ", 1)[-1].strip()[:300]


def run_lmms_eval_setting(
    base_url: str,
    model: str,
    task: str,
    setting: Setting,
    *,
    run_dir: Path,
    root_url: str,
    metric: str | None,
    extra_args: Sequence[str],
    allow_failed: float,
) -> SweepRow:
    run_dir.mkdir(parents=True, exist_ok=True)
    command = lmms_eval_command(base_url, model, task, setting, run_dir, extra_args)
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")
    before = server_ttft_totals(root_url)
    started = time.perf_counter()
    with (run_dir / "lmms-eval.log").open("wb") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    after = server_ttft_totals(root_url)
    usage_path = run_dir / "usage.json"
    usage = json.loads(usage_path.read_text()) if usage_path.is_file() else None
    error, status, score, name, items = "", "ok", None, metric or "", 0
    try:
        if proc.returncode != 0:
            raise RuntimeError(
                f"lmms-eval exited with {proc.returncode} (see {run_dir}/lmms-eval.log)"
            )
        if usage is None:
            raise RuntimeError("the mipruner model wrote no usage report: no request was sent")
        score, name, items = read_lmms_eval_results(run_dir, task, metric)
        failed = int(usage["samples_failed"])
        if usage["responses_without_pruning_usage"]:
            raise RuntimeError(
                "responses had no usage.visual_tokens_kept: the endpoint is not mipruner-vllm "
                "serve, so the setting was probably not applied"
            )
        if failed > allow_failed * max(items, 1) or items == 0:
            raise RuntimeError(f"{failed} of {items} samples failed: {usage.get('first_error')}")
        status = "partial" if failed else "ok"
    except (RuntimeError, KeyError, ValueError) as exc:
        status, error, score = "failed", str(exc), None
        logged = _last_logged_error(run_dir / "lmms-eval.log")
        if logged:
            error += f"; lmms-eval logged: {logged}"
    ok = status != "failed"
    return make_row(
        setting,
        dataset=f"lmms-eval:{task}",
        status=status,
        items=items,
        failed=int(usage["samples_failed"]) if usage else 0,
        model=model,
        accuracy=score,
        metric=name,
        visual=usage["visual_tokens"] if ok else None,
        kept=usage["visual_tokens_kept"] if ok else None,
        prompt_mean=usage["prompt_tokens"] / max(usage["requests"], 1) if ok else None,
        ttft_p50=None,
        ttft_mean=None,
        latency_p50=usage["latency_s_p50"] if ok else None,
        server_ttft=server_ttft_mean(before, after) if ok else None,
        wall=wall,
        error=error,
    )
