# SPDX-License-Identifier: Apache-2.0
"""End-to-end time to first token of a running OpenAI-compatible server, per keep ratio.

Two workloads, both with the official ``openai`` client, streamed, reading the prompt size from
the final usage chunk:

* ``--workload fresh`` (default): one image plus a one-line question per request. Every request
  carries a new random image (seeded), so no processor, encoder or prefix cache is hit; one
  warm-up request per keep ratio is not counted. Rows go to ``results/serve_ttft.csv``.
* ``--workload followup``: one new image, then several different questions about it, one after
  the other (a user asking about a picture, document QA). The first question pays for the vision
  tower; the follow-ups show what the caches save (stock vLLM: its encoder cache; the plugin: its
  store of unpruned encoder outputs, the selection re-runs per question). Each round uses a new
  image; one warm-up round is not counted. Rows go to ``results/serve_followup_ttft.csv``.

The parameters go in ``mm_processor_kwargs``, which both vLLM's own server with the plugin flags
and ``mipruner-vllm serve`` accept; ``--stock`` sends none (for a stock vLLM server). Rows carry
the machine, versions, commit and the load average at the start and end of the run.

Start a server first, for example the ``mid`` Qwen2.5-VL demo checkpoint on CPU::

    mipruner-vllm demo-model --arch qwen2_5_vl --size mid --out ./qwen25-mid
    python -m vllm.entrypoints.openai.api_server --model ./qwen25-mid --enforce-eager \\
        --max-model-len 4096 $(python -c "from mipruner_vllm.integration.launch import \\
        server_cli_args as a; print(' '.join(map(repr, a('./qwen25-mid'))))")

then::

    python benchmarks/bench_serve_ttft.py --base-url http://localhost:8000/v1 --size 896
    python benchmarks/bench_serve_ttft.py --workload followup --keep-ratios 1.0,0.25
    python benchmarks/bench_serve_ttft.py --workload followup --stock   # a stock vLLM server
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from utils import RESULTS_DIR, append_rows, git_commit, utc_timestamp  # noqa: E402


@dataclass
class ServeRow:
    """One keep ratio: medians over the measured requests."""

    benchmark: str
    model: str
    image_size: int
    keep_ratio: float
    requests: int
    prompt_tokens: int
    visual_tokens: int | None
    visual_tokens_kept: int | None
    ttft_s_p50: float
    ttft_s_min: float
    ttft_s_max: float
    total_s_p50: float
    max_tokens: int
    note: str = ""
    server_version: str = ""
    commit: str = field(default_factory=git_commit)
    timestamp: str = field(default_factory=utc_timestamp)


def image_url(size: int, seed: int) -> str:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class FollowupRow:
    """One server configuration of the follow-up workload: medians over the measured rounds."""

    benchmark: str
    server: str  # "stock" (no pruning fields sent) or "plugin"
    model: str
    image_size: int
    keep_ratio: float
    rounds: int
    questions: int
    prompt_tokens_first: int
    ttft_first_s_p50: float
    ttft_followup_s_p50: float
    followup_over_first: float
    ttft_first_s_all: str
    ttft_followup_s_all: str
    max_tokens: int
    machine: str
    load_avg_start: str
    load_avg_end: str
    note: str = ""
    server_version: str = ""
    commit: str = field(default_factory=git_commit)
    timestamp: str = field(default_factory=utc_timestamp)


#: The follow-up workload's questions: one image, asked about in turn.
FOLLOWUP_QUESTIONS = (
    "What is in the picture, and where is the brightest spot?",
    "Which colour covers most of the image?",
    "Is there any text in the picture?",
    "Describe the top left corner.",
)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def model_label(model: str) -> str:
    """The model as recorded: a served checkpoint path is reduced to its directory name, so rows
    carry no machine paths (serve with --served-model-name for a label of your own)."""
    return Path(model).name if Path(model).is_absolute() else model


def one_request(
    client,
    model: str,
    size: int,
    seed: int,
    keep_ratio: float | None,
    max_tokens: int,
    question: str = FOLLOWUP_QUESTIONS[0],
) -> dict:
    """Stream one chat completion; TTFT is the time to the first chunk carrying content.

    ``keep_ratio=None`` sends no pruning field (a stock vLLM server).
    """
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url(size, seed)}},
                {"type": "text", "text": question},
            ],
        }
    ]
    extra = (
        {}
        if keep_ratio is None
        else {"extra_body": {"mm_processor_kwargs": {"keep_ratio": keep_ratio}}}
    )
    started = time.perf_counter()
    first = None
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            usage = chunk.usage
    total = time.perf_counter() - started
    if usage is None:
        raise RuntimeError("the server sent no usage chunk (stream_options.include_usage)")
    extra = usage.model_extra or {}
    return {
        "ttft": first if first is not None else total,
        "total": total,
        "prompt_tokens": usage.prompt_tokens,
        "visual_tokens": extra.get("visual_tokens"),
        "visual_tokens_kept": extra.get("visual_tokens_kept"),
    }


def followup(client, model: str, args: argparse.Namespace, server_version: str) -> None:
    """One image, then the other questions about it; per keep ratio (or stock), several rounds."""
    questions = FOLLOWUP_QUESTIONS[: args.questions]
    ratios: list[float | None] = (
        [None] if args.stock else [float(r) for r in args.keep_ratios.split(",")]
    )
    rows = []
    seed = 5000
    for keep_ratio in ratios:
        load_start = load_average()
        firsts, follows, prompt_tokens = [], [], 0
        for round_ in range(args.repeats + 1):  # round 0 warms up
            seed += 1
            runs = [
                one_request(client, model, args.size, seed, keep_ratio, args.max_tokens, q)
                for q in questions
            ]
            if round_ == 0:
                continue
            firsts.append(runs[0]["ttft"])
            follows.extend(r["ttft"] for r in runs[1:])
            prompt_tokens = runs[0]["prompt_tokens"]
        first, follow = statistics.median(firsts), statistics.median(follows)
        row = FollowupRow(
            benchmark="serve_followup_ttft",
            server="stock" if keep_ratio is None else "plugin",
            model=model_label(model),
            image_size=args.size,
            keep_ratio=1.0 if keep_ratio is None else keep_ratio,
            rounds=args.repeats,
            questions=len(questions),
            prompt_tokens_first=prompt_tokens,
            ttft_first_s_p50=round(first, 3),
            ttft_followup_s_p50=round(follow, 3),
            followup_over_first=round(follow / first, 4),
            ttft_first_s_all=" ".join(f"{t:.3f}" for t in firsts),
            ttft_followup_s_all=" ".join(f"{t:.3f}" for t in follows),
            max_tokens=args.max_tokens,
            machine=machine(),
            load_avg_start=load_start,
            load_avg_end=load_average(),
            note=args.note,
            server_version=server_version,
        )
        rows.append(row)
        print(
            f"{row.server:<6} keep_ratio {row.keep_ratio:<5} first {first:.2f} s  "
            f"follow-up p50 {follow:.3f} s "
            f"({row.followup_over_first:.3f}x)  load {row.load_avg_start} -> {row.load_avg_end}",
            flush=True,
        )
    out = args.out if args.out is not None else RESULTS_DIR / "serve_followup_ttft.csv"
    append_rows(out, rows)
    print(f"appended {len(rows)} rows to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://localhost:8000/v1")
    parser.add_argument(
        "--model", default=None, help="served model name (default: the first one listed)"
    )
    parser.add_argument(
        "--size", type=int, default=896, help="side of the square test image in pixels"
    )
    parser.add_argument("--keep-ratios", default="1.0,0.5,0.25")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--note", default="", help="free text stored with each row (machine, launch flags)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="CSV to append to (default: per workload)"
    )
    parser.add_argument("--workload", choices=("fresh", "followup"), default="fresh")
    parser.add_argument(
        "--questions",
        type=int,
        default=len(FOLLOWUP_QUESTIONS),
        help="followup: questions per image",
    )
    parser.add_argument(
        "--stock", action="store_true", help="send no pruning fields (a stock vLLM server)"
    )
    args = parser.parse_args()
    if args.stock:
        args.keep_ratios = "1.0"

    import httpx
    from openai import OpenAI

    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=600)
    model = args.model or client.models.list().data[0].id
    root = args.base_url.rstrip("/").removesuffix("/v1")
    try:
        server_version = httpx.get(f"{root}/version", timeout=10).json().get("version", "")
    except (httpx.HTTPError, ValueError):
        server_version = ""

    if args.workload == "followup":
        followup(client, model, args, server_version)
        return
    rows = []
    seed = 1000
    for keep_ratio in (float(r) for r in args.keep_ratios.split(",")):
        sent = None if args.stock else keep_ratio
        seed += 1
        one_request(client, model, args.size, seed, sent, args.max_tokens)  # warm-up
        runs = []
        for _ in range(args.repeats):
            seed += 1
            runs.append(one_request(client, model, args.size, seed, sent, args.max_tokens))
        ttfts = [r["ttft"] for r in runs]
        row = ServeRow(
            benchmark="serve_ttft",
            model=model_label(model),
            image_size=args.size,
            keep_ratio=keep_ratio,
            requests=len(runs),
            prompt_tokens=runs[-1]["prompt_tokens"],
            visual_tokens=runs[-1]["visual_tokens"],
            visual_tokens_kept=runs[-1]["visual_tokens_kept"],
            ttft_s_p50=round(statistics.median(ttfts), 3),
            ttft_s_min=round(min(ttfts), 3),
            ttft_s_max=round(max(ttfts), 3),
            total_s_p50=round(statistics.median(r["total"] for r in runs), 3),
            max_tokens=args.max_tokens,
            note=args.note,
            server_version=server_version,
        )
        rows.append(row)
        print(
            f"keep_ratio {keep_ratio:<5} prompt_tokens {row.prompt_tokens:>6}  "
            f"TTFT p50 {row.ttft_s_p50:.2f} s (min {row.ttft_s_min:.2f}, max {row.ttft_s_max:.2f})",
            flush=True,
        )
    out = args.out if args.out is not None else RESULTS_DIR / "serve_ttft.csv"
    append_rows(out, rows)
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
