# SPDX-License-Identifier: Apache-2.0
"""``mipruner-vllm eval-sweep``: accuracy, visual tokens kept and TTFT against keep ratio.

Given an endpoint and a grid of settings, it runs every setting over one dataset and writes

* ``sweep.csv``: one row per setting (per setting and task for lmms-eval tasks) with the
  status, accuracy, requests failed, visual tokens in / kept, TTFT and wall time;
* ``sweep.png``: accuracy and TTFT against keep ratio, one line per method (and lambda), the
  spread of the two keep-ratio-1.0 runs drawn as the noise floor;
* ``sweep.json``: the command line, the server's vLLM version, the client's package versions and
  the machine (the load average on the client);
* ``runs/<n>-<setting>/``: each run's raw output (``samples.jsonl`` for a JSONL dataset; the
  lmms-eval output folder and the model's ``usage.json`` for tasks).

The dataset is either a JSONL of image / question / answer (:mod:`.data`), sent here with the
official openai client (streamed, so TTFT is measured per request), or an lmms-eval task list,
run through ``lmms-eval --model mipruner`` once per setting and task. Keep ratio 1.0 is always
run twice. A setting is scored only if every request succeeded (``--allow-failed`` relaxes
that) and the endpoint reported the visual tokens it kept; otherwise its row says ``failed``
with the first error, and the plot leaves it out. The tools do fail silently: a 400 on every
request still lets lmms-eval exit 0 with an accuracy of zero.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mipruner_vllm.evaluation.client import PruningClient, usage_value
from mipruner_vllm.evaluation.data import MATCH_MODES, Item, is_correct, load_items
from mipruner_vllm.evaluation.fields import describe

#: Server-side time to first token (vLLM's histogram), read from /metrics before and after a run.
SERVER_TTFT_METRIC = "vllm:time_to_first_token_seconds"


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: the request fields every request of the run carries."""

    fields: dict[str, Any]
    repeat: int = 1

    @property
    def label(self) -> str:
        base = describe(self.fields)
        return base if self.repeat == 1 else f"{base} (run {self.repeat})"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.label)[:80]


def parse_value(text: str) -> Any:
    """A command-line value as JSON when it parses (``0.25``, ``64``, ``true``), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_fields(text: str) -> dict[str, Any]:
    """``"keep_ratio=0.25,mi_tau=0.05"`` -> ``{"keep_ratio": 0.25, "mi_tau": 0.05}``."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {part!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def build_settings(
    keep_ratios: Sequence[float],
    methods: Sequence[str] = ("mi",),
    mi_lambdas: Sequence[float] = (),
    keep_tokens: Sequence[int] = (),
    common: dict[str, Any] | None = None,
    extra: Sequence[dict[str, Any]] = (),
) -> list[Setting]:
    """The grid: keep ratio 1.0 twice (the noise floor), then every pruned point, then ``extra``.

    At keep ratio 1.0 every method keeps everything, so the baseline is run once per repeat, not
    once per method. ``mi_lambdas`` multiply only the ``mi`` method (the others have no lambda).
    ``common`` fields are added to every setting (``mi_tau=0.05``); ``extra`` settings are taken
    as given, after ``common``.
    """
    common = dict(common or {})
    settings = [Setting({**common, "keep_ratio": 1.0}, repeat=r) for r in (1, 2)]
    budgets = [{"keep_ratio": float(r)} for r in keep_ratios if float(r) != 1.0]
    budgets += [{"keep_tokens": int(k)} for k in keep_tokens]
    for budget in budgets:
        for method in methods:
            lambdas = mi_lambdas if (method == "mi" and mi_lambdas) else [None]
            for lam in lambdas:
                point = {**common, **budget, "pruning_method": method}
                if lam is not None:
                    point["mi_lambda"] = float(lam)
                settings.append(Setting(point))
    settings += [Setting({**common, **e}) for e in extra]
    return settings


@dataclass
class SweepRow:
    """One run; the CSV header is these field names, in this order."""

    setting: str
    repeat: int
    dataset: str
    status: str  # ok | partial | failed
    items: int
    requests_failed: int
    accuracy: float | None
    metric: str
    keep_ratio: float | None
    keep_tokens: int | None
    pruning_method: str
    mi_lambda: float | None
    fields: str  # the request fields as JSON
    visual_tokens: int | None
    visual_tokens_kept: int | None
    kept_fraction: float | None
    prompt_tokens_mean: float | None
    ttft_s_p50: float | None
    ttft_s_mean: float | None
    latency_s_p50: float | None
    server_ttft_s_mean: float | None
    wall_s: float
    model: str
    error: str = ""
    timestamp: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------------------------
# /metrics: server-side TTFT
# ---------------------------------------------------------------------------------------------


def server_ttft_totals(root_url: str) -> tuple[float, float] | None:
    """(sum, count) of vLLM's TTFT histogram over all its series, or None if not scrapeable."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(root_url + "/metrics", timeout=30).text
        total, count, found = 0.0, 0.0, False
        for family in text_string_to_metric_families(text):
            if family.name != SERVER_TTFT_METRIC:
                continue
            for sample in family.samples:
                if sample.name == SERVER_TTFT_METRIC + "_sum":
                    total, found = total + sample.value, True
                elif sample.name == SERVER_TTFT_METRIC + "_count":
                    count += sample.value
        return (total, count) if found else None
    except (httpx.HTTPError, ValueError):
        return None


def _server_ttft_mean(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# ---------------------------------------------------------------------------------------------
# JSONL runs (openai client, streamed)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Answer:
    item: Item
    text: str | None = None
    error: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    visual_tokens: int | None = None
    visual_tokens_kept: int | None = None
    prompt_tokens: int | None = None


def _ask(client: PruningClient, model: str, item: Item, max_tokens: int) -> _Answer:
    content = [{"type": "image_url", "image_url": {"url": url}} for url in item.images]
    content.append({"type": "text", "text": item.question})
    answer = _Answer(item)
    started = time.perf_counter()
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        usage = None
        for chunk in stream:
            if chunk.choices:
                if answer.ttft_s is None:
                    answer.ttft_s = time.perf_counter() - started
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        answer.latency_s = time.perf_counter() - started
        answer.text = "".join(parts)
        answer.visual_tokens = usage_value(usage, "visual_tokens")
        answer.visual_tokens_kept = usage_value(usage, "visual_tokens_kept")
        answer.prompt_tokens = usage_value(usage, "prompt_tokens")
    except Exception as exc:  # every failure is counted and reported, none is scored
        answer.error = f"{type(exc).__name__}: {exc}"[:500]
    return answer


def warm_up(client: Any, model: str) -> str | None:
    """One request not counted anywhere, so the first run does not pay the server's first-request
    costs. Its image is random (seeded) and in no dataset, so no run gets a cache hit from it.
    Returns the error text if it failed (the runs then show their own errors)."""
    import base64
    import io
    import random

    from PIL import Image

    rng = random.Random(0)
    image = Image.frombytes(
        "RGB", (112, 112), bytes(rng.randrange(256) for _ in range(112 * 112 * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    try:
        client.chat.completions.create(
            model=model,
            max_tokens=1,
            temperature=0.0,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "warm-up"},
                    ],
                }
            ],
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_jsonl_setting(
    client: Any,
    model: str,
    items: Sequence[Item],
    setting: Setting,
    *,
    dataset: str,
    run_dir: Path,
    root_url: str,
    max_tokens: int,
    concurrency: int,
    match: str,
    allow_failed: float,
    progress: bool = True,
) -> SweepRow:
    from tqdm import tqdm

    pruning = PruningClient(client, setting.fields)
    before = server_ttft_totals(root_url)
    started = time.perf_counter()
    answers: list[_Answer] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(_ask, pruning, model, item, max_tokens) for item in items]
        bar = tqdm(
            total=len(futures), desc=setting.label, unit="item", disable=not progress, leave=True
        )
        for future in futures:
            answers.append(future.result())
            bar.update(1)
        bar.close()
    wall = time.perf_counter() - started
    after = server_ttft_totals(root_url)

    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "samples.jsonl").open("w") as out:
        for a in answers:
            ok = a.error is None
            out.write(
                json.dumps(
                    {
                        "id": a.item.id,
                        "question": a.item.question,
                        "answers": list(a.item.answers),
                        "prediction": a.text,
                        "correct": is_correct(a.text, a.item.answers, match) if ok else None,
                        "error": a.error,
                        "visual_tokens": a.visual_tokens,
                        "visual_tokens_kept": a.visual_tokens_kept,
                        "prompt_tokens": a.prompt_tokens,
                        "ttft_s": _round(a.ttft_s),
                        "latency_s": _round(a.latency_s),
                    }
                )
                + "\n"
            )

    done = [a for a in answers if a.error is None]
    failed = len(answers) - len(done)
    errors = [a.error for a in answers if a.error]
    no_usage = [a for a in done if a.visual_tokens_kept is None or a.visual_tokens is None]
    status, error = "ok", errors[0] if errors else ""
    if not done or failed > allow_failed * len(answers):
        status = "failed"
    elif no_usage:
        status = "failed"
        error = (
            f"{len(no_usage)} responses had no usage.visual_tokens_kept: the endpoint is not "
            "mipruner-vllm serve, so the setting was probably not applied"
        )
    elif failed:
        status = "partial"
    scored = status != "failed"
    ttfts = [a.ttft_s for a in done if a.ttft_s is not None]
    visual = sum(a.visual_tokens or 0 for a in done)
    kept = sum(a.visual_tokens_kept or 0 for a in done)
    return _row(
        setting,
        dataset=dataset,
        status=status,
        items=len(answers),
        failed=failed,
        model=model,
        accuracy=(sum(is_correct(a.text or "", a.item.answers, match) for a in done) / len(done))
        if scored
        else None,
        metric=f"{match}_match",
        visual=visual if scored else None,
        kept=kept if scored else None,
        prompt_mean=statistics.fmean(a.prompt_tokens or 0 for a in done) if scored else None,
        ttft_p50=statistics.median(ttfts) if scored and ttfts else None,
        ttft_mean=statistics.fmean(ttfts) if scored and ttfts else None,
        latency_p50=statistics.median(a.latency_s for a in done) if scored else None,
        server_ttft=_server_ttft_mean(before, after) if scored else None,
        wall=wall,
        error=error,
    )


def _row(
    setting: Setting,
    *,
    dataset: str,
    status: str,
    items: int,
    failed: int,
    model: str,
    accuracy: float | None,
    metric: str,
    visual: int | None,
    kept: int | None,
    prompt_mean: float | None,
    ttft_p50: float | None,
    ttft_mean: float | None,
    latency_p50: float | None,
    server_ttft: float | None,
    wall: float,
    error: str,
) -> SweepRow:
    f = setting.fields
    return SweepRow(
        setting=setting.label,
        repeat=setting.repeat,
        dataset=dataset,
        status=status,
        items=items,
        requests_failed=failed,
        accuracy=accuracy,
        metric=metric,
        keep_ratio=f.get("keep_ratio") if isinstance(f.get("keep_ratio"), (int, float)) else None,
        keep_tokens=f.get("keep_tokens") if isinstance(f.get("keep_tokens"), int) else None,
        pruning_method=str(f.get("pruning_method", "")),
        mi_lambda=f.get("mi_lambda") if isinstance(f.get("mi_lambda"), (int, float)) else None,
        fields=json.dumps(f, sort_keys=True),
        visual_tokens=visual,
        visual_tokens_kept=kept,
        kept_fraction=_round(kept / visual) if visual and kept is not None else None,
        prompt_tokens_mean=_round(prompt_mean, 2),
        ttft_s_p50=_round(ttft_p50),
        ttft_s_mean=_round(ttft_mean),
        latency_s_p50=_round(latency_p50),
        server_ttft_s_mean=_round(server_ttft),
        wall_s=round(wall, 2),
        model=model,
        error=error.replace("\n", " "),
    )


# ---------------------------------------------------------------------------------------------
# lmms-eval runs (a subprocess per setting and task)
# ---------------------------------------------------------------------------------------------


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
    return _row(
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
        server_ttft=_server_ttft_mean(before, after) if ok else None,
        wall=wall,
        error=error,
    )


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


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
        if len(base) >= 2:
            low, high = min(r.accuracy for r in base), max(r.accuracy for r in base)
            if high > low:
                acc_ax.axhspan(low, high, alpha=0.15, color="grey")
            else:
                acc_ax.axhline(low, linestyle="--", color="grey", linewidth=1)
        curves: dict[tuple[str, float | None], list[SweepRow]] = {}
        for r in scored:
            if r.dataset == dataset and r.keep_ratio != 1.0:
                curves.setdefault((r.pruning_method or "default", r.mi_lambda), []).append(r)
        for (method, lam), points in sorted(
            curves.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)
        ):
            points = sorted(points + base[:1], key=lambda r: _x(r) or 0)
            name = method + ("" if lam is None else f" λ={lam:g}")
            label = name if len(datasets) == 1 else f"{dataset} {name}"
            acc_ax.plot(
                [_x(r) for r in points], [r.accuracy for r in points], marker="o", label=label
            )
            ttft = [
                (_x(r), r.ttft_s_p50 if r.ttft_s_p50 is not None else r.server_ttft_s_mean)
                for r in points
            ]
            ttft = [(x, t) for x, t in ttft if t is not None]
            if ttft:
                ttft_ax.plot(
                    [x for x, _ in ttft], [t * 1000 for _, t in ttft], marker="o", label=label
                )
        acc_ax.scatter(
            [1.0] * len(base),
            [r.accuracy for r in base],
            color="black",
            zorder=3,
            label="keep ratio 1.0 (two runs)" if dataset == datasets[0] else None,
        )
    if scored:
        low, high = min(r.accuracy for r in scored), max(r.accuracy for r in scored)
        acc_ax.set_ylim(
            max(0.0, low - 0.05), min(1.0, high + 0.05) if high + 0.05 > low else low + 0.05
        )
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
    failed = [r.setting for r in rows if r.status == "failed"]
    caption = title + (f"\nfailed, not plotted: {'; '.join(failed)}" if failed else "")
    if caption:
        figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


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


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mipruner-vllm eval-sweep",
        description="Accuracy, visual tokens kept and TTFT against keep ratio on a running "
        "mipruner-vllm server. Writes OUT/sweep.csv, OUT/sweep.png and OUT/runs/.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", type=Path, help="JSONL of image / question / answer (docs/evaluation.md)"
    )
    source.add_argument(
        "--tasks", help="comma-separated lmms-eval tasks (needs mipruner-vllm[eval])"
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    p.add_argument(
        "--model", default=None, help="served model name (default: the first one listed)"
    )
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"))
    p.add_argument("--out", type=Path, default=Path("eval-sweep"), help="output folder")
    p.add_argument(
        "--keep-ratios",
        type=_floats,
        default=[1.0, 0.5, 0.25, 0.125],
        help="comma-separated; 1.0 is always run twice (default 1.0,0.5,0.25,0.125)",
    )
    p.add_argument(
        "--keep-tokens",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[],
        help="comma-separated absolute budgets, run as well as the ratios",
    )
    p.add_argument("--methods", default="mi", help="comma-separated pruning methods (default mi)")
    p.add_argument("--mi-lambdas", type=_floats, default=[], help="comma-separated lambdas for mi")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a request field added to every setting (repeatable), e.g. mi_tau=0.05",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="F=V[,F=V]",
        help="one more setting, as given (repeatable), e.g. keep_ratio=0.25,mi_lambda=0.5",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="first N items only (lmms-eval: --limit)"
    )
    p.add_argument(
        "--allow-failed",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="score a setting whose failed requests are at most this fraction (default 0)",
    )
    jsonl = p.add_argument_group("JSONL dataset")
    jsonl.add_argument("--max-tokens", type=int, default=16)
    jsonl.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    jsonl.add_argument("--match", choices=MATCH_MODES, default="exact")
    tasks = p.add_argument_group("lmms-eval tasks")
    tasks.add_argument(
        "--metric", default=None, help="the metric to report (default: the task's first)"
    )
    tasks.add_argument(
        "--lmms-eval-args",
        default="",
        help="more lmms-eval arguments, one string (e.g. '--include_path my_tasks/')",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import shlex

    args = parser().parse_args(argv)
    try:
        common: dict[str, Any] = {}
        for text in args.field:
            common.update(parse_fields(text))
        extra = [parse_fields(text) for text in args.setting]
    except argparse.ArgumentTypeError as exc:
        parser().error(str(exc))
    settings = build_settings(
        args.keep_ratios,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        args.mi_lambdas,
        args.keep_tokens,
        common,
        extra,
    )

    from openai import OpenAI

    base_url = args.base_url.rstrip("/")
    root_url = base_url.removesuffix("/v1")
    client = OpenAI(base_url=base_url, api_key=args.api_key, max_retries=0, timeout=600)
    model = args.model or client.models.list().data[0].id
    out: Path = args.out
    rows: list[SweepRow] = []
    csv_path, png_path = out / "sweep.csv", out / "sweep.png"

    if args.data is not None:
        items = load_items(args.data, args.limit)
        jobs = [(s, args.data.name) for s in settings]
        failure = warm_up(client, model)
        if failure:
            print(f"eval-sweep: the warm-up request failed: {failure}", flush=True)
    else:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        jobs = [(s, task) for task in tasks for s in settings]
        extra_args = shlex.split(args.lmms_eval_args)
        if args.limit is not None:
            extra_args += ["--limit", str(args.limit)]
    print(f"eval-sweep: {len(jobs)} runs on {model} at {base_url} -> {out}", flush=True)
    for number, (setting, dataset) in enumerate(jobs, start=1):
        run_dir = out / "runs" / f"{number:02d}-{setting.slug}"
        if args.data is not None:
            row = run_jsonl_setting(
                client,
                model,
                items,
                setting,
                dataset=dataset,
                run_dir=run_dir,
                root_url=root_url,
                max_tokens=args.max_tokens,
                concurrency=args.concurrency,
                match=args.match,
                allow_failed=args.allow_failed,
                progress=not args.no_progress,
            )
        else:
            print(f"[{number}/{len(jobs)}] lmms-eval {dataset} {setting.label}", flush=True)
            row = run_lmms_eval_setting(
                base_url,
                model,
                dataset,
                setting,
                run_dir=run_dir,
                root_url=root_url,
                metric=args.metric,
                extra_args=extra_args,
                allow_failed=args.allow_failed,
            )
        rows.append(row)
        accuracy = "-" if row.accuracy is None else f"{row.accuracy:.4f}"
        kept = "-" if row.kept_fraction is None else f"{row.kept_fraction:.3f}"
        print(
            f"[{number}/{len(jobs)}] {row.status:<7} {row.dataset} {row.setting}: "
            f"accuracy {accuracy}, kept {kept}, failed {row.requests_failed}/{row.items}"
            + (f" ({row.error[:200]})" if row.error else ""),
            flush=True,
        )
        write_csv(rows, csv_path)  # after every run, so an interrupted sweep keeps what it did
    plot(rows, png_path, title=f"{model}: {', '.join(sorted({r.dataset for r in rows}))}")
    write_meta(
        out / "sweep.json",
        argv=list(argv) if argv is not None else sys.argv[1:],
        base_url=base_url,
        root_url=root_url,
        model=model,
        rows=rows,
    )
    failed = sum(r.status == "failed" for r in rows)
    print(f"wrote {csv_path} ({len(rows)} rows, {failed} failed) and {png_path}", flush=True)
    # 0: every setting scored; 2: some failed (their rows say why); 1: none scored.
    return 0 if not failed else (1 if failed == len(rows) else 2)


if __name__ == "__main__":
    sys.exit(main())
