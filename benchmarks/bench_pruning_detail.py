# SPDX-License-Identifier: Apache-2.0
"""What ``pruning_detail`` (and ``pruning_detail_scores``) cost a request: latency and bytes.

Against a running ``mipruner-vllm serve`` (default: the embedded demo model on 127.0.0.1:8000),
one image per request, the same budget in every variant. The variants take turns (``none``,
``detail``, ``detail+scores``, then again), so a change in the machine's load falls on all of
them alike; each request uses a new image, so no variant profits from a cache the other filled.
Prints a table and writes ``benchmarks/results/pruning_detail.csv`` with the machine, versions,
commit and load. Latency is the client's wall time of a non-streamed request (it includes the
detail's file hand-off in the worker and the API server); bytes are the response body's.

    python benchmarks/bench_pruning_detail.py --n 40 --side 448
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from utils import RESULTS_DIR, git_commit, image_url, utc_timestamp  # noqa: E402

VARIANTS: dict[str, dict] = {
    "none": {},
    "detail": {"pruning_detail": True},
    "detail+scores": {"pruning_detail": True, "pruning_detail_scores": True},
}


def one_request(client: httpx.Client, model: str, seed: int, side: int, fields: dict) -> dict:
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url(seed, side)}},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            }
        ],
        "max_tokens": 4,
        "temperature": 0.0,
        "keep_ratio": 0.25,
        **fields,
    }
    start = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    usage = response.json()["usage"]
    return {
        "latency_s": elapsed,
        "bytes": len(response.content),
        "visual_tokens": usage["visual_tokens"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="mipruner-demo")
    p.add_argument("--n", type=int, default=40, help="requests per variant")
    p.add_argument("--side", type=int, default=448, help="image side in pixels")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "pruning_detail.csv")
    args = p.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    load_start = os.getloadavg()[0]
    with httpx.Client(base_url=args.url, timeout=300) as client:
        one_request(client, args.model, 0, args.side, {})  # warm-up, not recorded
        for i in range(args.n):
            for k, (name, fields) in enumerate(VARIANTS.items()):
                seed = 1 + i * len(VARIANTS) + k
                runs[name].append(one_request(client, args.model, seed, args.side, fields))
    load_end = os.getloadavg()[0]
    rows = []
    for name, results in runs.items():
        latencies = sorted(r["latency_s"] for r in results)
        rows.append(
            {
                "variant": name,
                "requests": len(results),
                "visual_tokens": results[0]["visual_tokens"],
                "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
                "latency_mean_ms": round(1000 * statistics.fmean(latencies), 1),
                "response_bytes_median": int(statistics.median(r["bytes"] for r in results)),
                "machine": f"{platform.machine()} ({os.cpu_count()} cores)",
                "model": args.model,
                "image_side": args.side,
                "load_start": round(load_start, 2),
                "load_end": round(load_end, 2),
                "commit": git_commit(),
                "when": utc_timestamp(),
            }
        )
    for row in rows:
        print(
            f"{row['variant']:>14}: p50 {row['latency_p50_ms']} ms, mean "
            f"{row['latency_mean_ms']} ms, {row['response_bytes_median']} B "
            f"({row['visual_tokens']} visual tokens, {row['requests']} requests)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"load {load_start:.1f} -> {load_end:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
