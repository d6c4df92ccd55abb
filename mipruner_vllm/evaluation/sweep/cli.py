# SPDX-License-Identifier: Apache-2.0
"""The ``eval-sweep`` command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipruner_vllm.evaluation.data import MATCH_MODES, load_items
from mipruner_vllm.evaluation.sweep.jsonl import run_jsonl_setting, warm_up
from mipruner_vllm.evaluation.sweep.lmms import run_lmms_eval_setting
from mipruner_vllm.evaluation.sweep.report import plot, write_csv, write_meta
from mipruner_vllm.evaluation.sweep.rows import SweepRow
from mipruner_vllm.evaluation.sweep.settings import Setting, build_settings, parse_fields

__all__ = ["main", "parser"]


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


def _settings(args: argparse.Namespace) -> list[Setting]:
    try:
        common: dict[str, Any] = {}
        for text in args.field:
            common.update(parse_fields(text))
        extra = [parse_fields(text) for text in args.setting]
    except argparse.ArgumentTypeError as exc:
        parser().error(str(exc))
    return build_settings(
        args.keep_ratios,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        args.mi_lambdas,
        args.keep_tokens,
        common,
        extra,
    )


@dataclass
class _Target:
    """Where the runs go: the endpoint, the served model and the output folder."""

    client: Any
    model: str
    base_url: str
    root_url: str
    out: Path


def _jsonl_runner(args: argparse.Namespace, target: _Target) -> Callable[[Setting, Path], SweepRow]:
    items = load_items(args.data, args.limit)
    failure = warm_up(target.client, target.model)
    if failure:
        print(f"eval-sweep: the warm-up request failed: {failure}", flush=True)

    def run(setting: Setting, run_dir: Path) -> SweepRow:
        return run_jsonl_setting(
            target.client,
            target.model,
            items,
            setting,
            dataset=args.data.name,
            run_dir=run_dir,
            root_url=target.root_url,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency,
            match=args.match,
            allow_failed=args.allow_failed,
            progress=not args.no_progress,
        )

    return run


def _lmms_eval_runner(
    args: argparse.Namespace, target: _Target, task: str
) -> Callable[[Setting, Path], SweepRow]:
    extra_args = shlex.split(args.lmms_eval_args)
    if args.limit is not None:
        extra_args += ["--limit", str(args.limit)]

    def run(setting: Setting, run_dir: Path) -> SweepRow:
        return run_lmms_eval_setting(
            target.base_url,
            target.model,
            task,
            setting,
            run_dir=run_dir,
            root_url=target.root_url,
            metric=args.metric,
            extra_args=extra_args,
            allow_failed=args.allow_failed,
        )

    return run


def _report_progress(number: int, total: int, row: SweepRow) -> None:
    accuracy = "-" if row.accuracy is None else f"{row.accuracy:.4f}"
    kept = "-" if row.kept_fraction is None else f"{row.kept_fraction:.3f}"
    print(
        f"[{number}/{total}] {row.status:<7} {row.dataset} {row.setting}: "
        f"accuracy {accuracy}, kept {kept}, failed {row.requests_failed}/{row.items}"
        + (f" ({row.error[:200]})" if row.error else ""),
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = _settings(args)

    import httpx
    from openai import DefaultHttpxClient, OpenAI

    base_url = args.base_url.rstrip("/")
    # No retries (a retried request is a second, uncounted run of the item) and so no reused idle
    # connections: one the server's keep-alive timer closes just as a request is written to it
    # would fail that item with "Server disconnected without sending a response".
    http_client = DefaultHttpxClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=600)
    client = OpenAI(
        base_url=base_url, api_key=args.api_key, max_retries=0, timeout=600,
        http_client=http_client,
    )  # fmt: skip
    model = args.model or client.models.list().data[0].id
    target = _Target(client, model, base_url, base_url.removesuffix("/v1"), args.out)
    if args.data is not None:
        runner = _jsonl_runner(args, target)
        jobs = [(s, runner) for s in settings]
    else:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        jobs = [(s, _lmms_eval_runner(args, target, task)) for task in tasks for s in settings]
    out: Path = args.out
    csv_path, png_path = out / "sweep.csv", out / "sweep.png"
    print(f"eval-sweep: {len(jobs)} runs on {model} at {base_url} -> {out}", flush=True)
    rows: list[SweepRow] = []
    for number, (setting, run) in enumerate(jobs, start=1):
        if args.data is None:
            print(f"[{number}/{len(jobs)}] lmms-eval {setting.label}", flush=True)
        rows.append(run(setting, out / "runs" / f"{number:02d}-{setting.slug}"))
        _report_progress(number, len(jobs), rows[-1])
        write_csv(rows, csv_path)  # after every run, so an interrupted sweep keeps what it did
    plot(rows, png_path, title=f"{model}: {', '.join(sorted({r.dataset for r in rows}))}")
    write_meta(
        out / "sweep.json",
        argv=list(argv) if argv is not None else sys.argv[1:],
        base_url=base_url,
        root_url=target.root_url,
        model=model,
        rows=rows,
    )
    failed = sum(r.status == "failed" for r in rows)
    print(f"wrote {csv_path} ({len(rows)} rows, {failed} failed) and {png_path}", flush=True)
    # 0: every setting scored; 2: some failed (their rows say why); 1: none scored.
    return 0 if not failed else (1 if failed == len(rows) else 2)
