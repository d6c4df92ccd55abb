# SPDX-License-Identifier: Apache-2.0
"""End-to-end time to first token of a running OpenAI-compatible server, per keep ratio.

Sends one image plus a one-line question per request with the official ``openai`` client,
streamed, and reads the prompt size from the final usage chunk. Every request carries a new
random image (seeded), so no processor, encoder or prefix cache is hit; one warm-up request
per keep ratio is not counted. The parameters go in ``mm_processor_kwargs``, which both vLLM's
own server with the plugin flags and ``mipruner-vllm serve`` accept. Rows are appended to
``benchmarks/results/serve_ttft.csv`` with the machine, versions and commit.

Start a server first, for example the ``mid`` Qwen2.5-VL demo checkpoint on CPU::

    mipruner-vllm demo-model --arch qwen2_5_vl --size mid --out ./qwen25-mid
    python -m vllm.entrypoints.openai.api_server --model ./qwen25-mid --enforce-eager \\
        --max-model-len 4096 $(python -c "from mipruner_vllm.integration.launch import \\
        server_cli_args as a; print(' '.join(map(repr, a('./qwen25-mid', 'cpu'))))")

then::

    python benchmarks/bench_serve_ttft.py --base-url http://localhost:8000/v1 --size 896
"""

from __future__ import annotations

import argparse
import base64
import io
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


def one_request(client, model: str, size: int, seed: int, keep_ratio: float | None, max_tokens: int) -> dict:
    """Stream one chat completion; TTFT is the time to the first chunk carrying content.

    ``keep_ratio=None`` sends no pruning field at all (a stock vLLM server refuses them).
    """
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url(size, seed)}},
                {"type": "text", "text": "What is in the picture, and where is the brightest spot?"},
            ],
        }
    ]
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
        extra_body=None if keep_ratio is None else {"mm_processor_kwargs": {"keep_ratio": keep_ratio}},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://localhost:8000/v1")
    parser.add_argument("--model", default=None, help="served model name (default: the first one listed)")
    parser.add_argument("--size", type=int, default=896, help="side of the square test image in pixels")
    parser.add_argument("--keep-ratios", default="1.0,0.5,0.25")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--note", default="", help="free text stored with each row (machine, launch flags)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serve_ttft.csv")
    parser.add_argument(
        "--stock", action="store_true", help="stock vLLM server: send no pruning fields (one row, keep_ratio 1)"
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
            model=model,
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
    append_rows(args.out, rows)
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
