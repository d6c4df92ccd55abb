# SPDX-License-Identifier: Apache-2.0
"""Plot time to first token and throughput against keep ratio from vLLM ``bench serve`` results.

Run vLLM's own benchmark client once per keep ratio against ``mipruner-vllm serve``, saving each
result with the ratio as metadata (the pruning fields go in the request body via
``--extra-body``)::

    for r in 1.0 0.5 0.25 0.125; do
      python -m vllm.entrypoints.cli.main bench serve --backend openai-chat \\
        --base-url http://127.0.0.1:8000 --endpoint /v1/chat/completions --model mipruner-demo \\
        --tokenizer ~/.cache/mipruner-vllm/<demo dir> --dataset-name random-mm \\
        --num-prompts 32 --random-input-len 16 --random-output-len 8 \\
        --random-mm-base-items-per-request 1 \\
        --random-mm-limit-mm-per-prompt '{"image": 1, "video": 0}' \\
        --random-mm-bucket-config '{(448, 448, 1): 1.0}' \\
        --extra-body "{\\"keep_ratio\\": $r}" --metadata keep_ratio=$r \\
        --save-result --result-dir bench-serve
    done
    python benchmarks/plot_bench_serve.py bench-serve/*.json \\
      --out docs/images/bench_serve_keep_ratio.png

The plot has one line per served model: median and p99 TTFT (left), request throughput (right).
It also prints the table it plotted (with output-token throughput).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchPoint:
    """The figures of one ``bench serve`` result file that the plot uses."""

    model: str
    keep_ratio: float
    num_prompts: int
    median_ttft_ms: float
    p99_ttft_ms: float
    request_throughput: float
    output_throughput: float
    source: str

    @classmethod
    def from_result(cls, path: Path) -> BenchPoint:
        result = json.loads(path.read_text())
        if "keep_ratio" not in result:
            raise SystemExit(f"{path}: no keep_ratio; run bench serve with --metadata keep_ratio=R")
        p99 = result.get("p99_ttft_ms")
        if p99 is None:
            raise SystemExit(
                f"{path}: no p99_ttft_ms; keep bench serve's default "
                "--percentile-metrics/--metric-percentiles"
            )
        return cls(
            model=str(result.get("model_id", "?")),
            keep_ratio=float(result["keep_ratio"]),
            num_prompts=int(result["num_prompts"]),
            median_ttft_ms=float(result["median_ttft_ms"]),
            p99_ttft_ms=float(p99),
            request_throughput=float(result["request_throughput"]),
            output_throughput=float(result["output_throughput"]),
            source=path.name,
        )


def plot(points: list[BenchPoint], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model: dict[str, list[BenchPoint]] = defaultdict(list)
    for point in points:
        by_model[point.model].append(point)
    fig, (ax_ttft, ax_tput) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for model, series in sorted(by_model.items()):
        series.sort(key=lambda p: p.keep_ratio)
        ratios = [p.keep_ratio for p in series]
        label = Path(model).name or model
        ax_ttft.plot(ratios, [p.median_ttft_ms for p in series], "o-", label=f"{label} median")
        ax_ttft.plot(
            ratios, [p.p99_ttft_ms for p in series], "s--", alpha=0.7, label=f"{label} p99"
        )
        ax_tput.plot(ratios, [p.request_throughput for p in series], "o-", label=label)
    xlabel = "keep ratio (visual tokens kept / visual tokens)"
    ax_ttft.set(xlabel=xlabel, ylabel="TTFT (ms)", title="Time to first token")
    ax_tput.set(xlabel=xlabel, ylabel="requests / s", title="Request throughput")
    for ax in (ax_ttft, ax_tput):
        ax.set_xlim(0, 1.05)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench serve result JSON files")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title (say the machine and load)")
    args = parser.parse_args(argv)
    points = sorted(
        (BenchPoint.from_result(p) for p in args.results), key=lambda p: (p.model, p.keep_ratio)
    )
    print(
        f"{'model':<24} {'keep':>5} {'n':>4} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} "
        f"{'req/s':>7} {'out tok/s':>10}"
    )
    for p in points:
        print(
            f"{Path(p.model).name[:24]:<24} {p.keep_ratio:>5.3g} {p.num_prompts:>4} "
            f"{p.median_ttft_ms:>12.1f} {p.p99_ttft_ms:>12.1f} {p.request_throughput:>7.2f} "
            f"{p.output_throughput:>10.1f}"
        )
    plot(points, args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
