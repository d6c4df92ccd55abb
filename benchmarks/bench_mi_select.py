# SPDX-License-Identifier: Apache-2.0
"""Selection micro-benchmark: MI-Pruner per media item (lambda = 1 by default, scores + top-k).

Providers: ``triton`` (the fused kernels; CUDA only), ``torch`` (the eager oracle,
``reference.select_mi``) and ``torch_compile`` (``torch.compile`` of the same oracle). Shapes come
from real models (visual tokens per item x LLM hidden size); N_T and the keep ratio are swept.
Rows are appended to ``benchmarks/results/mi_select.csv``.

    python benchmarks/bench_mi_select.py            # everything this machine can run
    python benchmarks/bench_mi_select.py --quick    # a small subset (CPU smoke run)
    python benchmarks/bench_mi_select.py --mi-lambda 0.5 --quick   # the greedy kernel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from utils import RESULTS_DIR, BenchmarkRow, append_rows, device_name, time_ms  # noqa: E402

from mipruner_vllm.params import n_keep  # noqa: E402
from mipruner_vllm.pruning import reference  # noqa: E402

#: (visual tokens per item, LLM hidden size) of the supported models.
MODEL_SHAPES: dict[str, list[tuple[int, int]]] = {
    "llava-1.5-7b": [(576, 4096)],
    "qwen2.5-vl-7b": [(1024, 3584), (4096, 3584), (16384, 3584)],
    "qwen2-vl-2b": [(1024, 1536)],
}
TEXT_LENGTHS = (16, 64, 256)
KEEP_RATIOS = (0.25, 0.5)
#: Peak HBM bandwidth (bytes/s) for the bandwidth-bound column, by device-name substring.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


TAU = 0.1


def providers_for(device: str, wanted: list[str], mi_lambda: float) -> dict[str, object]:
    """Selection callables ``(visual, text, k) -> indices`` per provider."""

    def oracle(visual: torch.Tensor, text: torch.Tensor, k: int) -> torch.Tensor:
        return reference.select_mi(visual, text, k, mi_lambda, TAU)

    out: dict[str, object] = {}
    if "torch" in wanted:
        out["torch"] = oracle
    if "torch_compile" in wanted:
        out["torch_compile"] = torch.compile(oracle, dynamic=True)
    if "triton" in wanted and device == "cuda":
        if mi_lambda >= 1.0:
            from mipruner_vllm.kernels.mi_select import mi_select

            out["triton"] = lambda v, t, k: mi_select([v], [t], [k], [TAU])[0][0]
        else:
            from mipruner_vllm.kernels.mi_greedy import mi_greedy

            out["triton"] = lambda v, t, k: mi_greedy([v], [t], [k], [TAU], [mi_lambda])[0][0]
    return out


def bandwidth_bound_ms(
    n_v: int, n_t: int, dim: int, dtype: torch.dtype, device: str
) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    peak = next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)
    if peak is None:
        return None
    size = torch.tensor([], dtype=dtype).element_size()
    return (n_v + n_t) * dim * size / peak * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small subset: one shape per model, N_T 16 and 256, keep 25%%",
    )
    parser.add_argument("--providers", default="triton,torch,torch_compile")
    parser.add_argument(
        "--mi-lambda", type=float, default=1.0, help="1.0: one-pass top-k; < 1: the greedy search"
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument(
        "--repeats", type=int, default=3, help="CPU timer repeats (GPU uses do_bench)"
    )
    parser.add_argument(
        "--max-visual", type=int, default=None, help="skip items with more visual tokens"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "mi_select.csv")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    providers = providers_for(device, args.providers.split(","), args.mi_lambda)
    bench_name = "mi_select" if args.mi_lambda >= 1.0 else f"mi_greedy(lambda={args.mi_lambda})"
    if device != "cuda" and "triton" in args.providers:
        print("triton: not measured (no CUDA device; the interpreter is not a performance path)")
    shapes = [(m, nv, d) for m, sh in MODEL_SHAPES.items() for nv, d in sh]
    text_lengths, keep_ratios = TEXT_LENGTHS, KEEP_RATIOS
    if args.quick:
        shapes = [(m, nv, d) for m, nv, d in shapes if nv <= 4096]
        text_lengths, keep_ratios = (16, 256), (0.25,)
    if args.max_visual:
        shapes = [s for s in shapes if s[1] <= args.max_visual]
    dev_name = device_name(device)
    print(f"device: {dev_name}; torch {torch.__version__}; dtype {args.dtype}")
    print(
        f"{'provider':<14} {'model':<14} {'N_V':>6} {'d':>5} {'N_T':>4} {'keep':>5} {'p50 ms':>9} {'p20':>9} {'p80':>9}  note"
    )
    rows: list[BenchmarkRow] = []
    for model, n_v, dim in shapes:
        g = torch.Generator().manual_seed(n_v)
        visual = torch.randn(n_v, dim, generator=g).to(dtype).to(device)
        for n_t in text_lengths:
            text = torch.randn(n_t, dim, generator=g).to(dtype).to(device)
            for ratio in keep_ratios:
                k = n_keep(n_v, keep_ratio=ratio)
                bound = bandwidth_bound_ms(n_v, n_t, dim, dtype, device)
                for name, fn in providers.items():
                    note = "" if bound is None else f"bandwidth bound {bound:.4f} ms"
                    try:
                        p50, p20, p80 = time_ms(
                            lambda fn=fn, v=visual, t=text, k=k: fn(v, t, k),
                            device,
                            repeats=args.repeats,
                        )
                    except Exception as exc:  # noqa: BLE001 - record the failure, keep benchmarking
                        p50 = p20 = p80 = float("nan")
                        note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    row = BenchmarkRow(bench_name, name, model, n_v, dim, n_t, ratio, args.dtype,
                                       round(p50, 4), round(p20, 4), round(p80, 4), note, dev_name)  # fmt: skip
                    rows.append(row)
                    print(f"{name:<14} {model:<14} {n_v:>6} {dim:>5} {n_t:>4} {ratio:>5} {p50:>9.3f} {p20:>9.3f} {p80:>9.3f}  {note}",
                          flush=True)  # fmt: skip
    append_rows(args.out, rows)
    print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
