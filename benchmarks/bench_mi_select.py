# SPDX-License-Identifier: Apache-2.0
"""Selection micro-benchmark: MI-Pruner on batches of media items (scores + top-k or greedy).

Providers: ``triton`` (the one kernel launcher, :func:`mipruner_vllm.kernels.launch.mi_prune`, on
a packed varlen batch; CUDA, or the CPU interpreter for a smoke run), ``torch`` (the eager oracle,
``reference.select_mi``, item by item as the torch backend runs it) and ``torch_compile``
(``torch.compile`` of the same oracle). Shapes come from real models (visual tokens per item x
LLM hidden size). The items of a batch lie back to back in one buffer, as vLLM's encoder output
does, so the kernels see them without a copy.

Each row also gives the compulsory traffic of one call (V and T read once) and the achieved
bandwidth at the median time, as a share of the GPU's peak DRAM bandwidth: how far a
provider is from the memory-bound limit of the selection.

    python benchmarks/bench_mi_select.py                       # the sweep, batch 1
    python benchmarks/bench_mi_select.py --quick               # a small subset (CPU smoke run)
    python benchmarks/bench_mi_select.py --mi-lambda 0.5       # the greedy kernel
    python benchmarks/bench_mi_select.py --preset gpu-check    # scripts/gpu-check.sh's matrix
    python benchmarks/bench_mi_select.py --preset dry-run      # tiny shapes, interpreter
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from utils import (  # noqa: E402
    RESULTS_DIR,
    BenchmarkRow,
    append_rows,
    device_name,
    driver_version,
    peak_bandwidth,
    time_ms,
    triton_version,
)

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
TAU = 0.1


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement point (every provider is timed on it)."""

    model: str
    n_visual: int
    dim: int
    n_text: int
    keep_ratio: float
    batch: int
    mi_lambda: float
    providers: tuple[str, ...]


def preset_cases(name: str, providers: tuple[str, ...]) -> list[Case]:
    """The matrices of ``--preset``.

    ``gpu-check``: LLaVA-1.5 (576 x 4096), Qwen2.5-VL images (1024 and 4096 x 3584) and video
    (16384 x 3584), batches of 1 / 8 / 32 items, a 64-token question, keep 25 %, lambda = 1 on
    every provider; then the greedy search (lambda = 0.5) at batch 1 for Triton and eager torch
    (a torch.compile of a loop with one host sync per kept token measures nothing useful).
    ``dry-run``: the same code paths on tiny shapes (a CPU smoke test under the interpreter).
    """
    if name == "gpu-check":
        shapes = [("llava-1.5-7b", 576, 4096), ("qwen2.5-vl-7b", 1024, 3584),
                  ("qwen2.5-vl-7b", 4096, 3584), ("qwen2.5-vl-7b-video", 16384, 3584)]  # fmt: skip
        cases = [Case(m, nv, d, 64, 0.25, b, 1.0, providers)
                 for b in (1, 8, 32) for m, nv, d in shapes]  # fmt: skip
        greedy = tuple(p for p in providers if p != "torch_compile")
        cases += [Case(m, nv, d, 64, 0.25, 1, 0.5, greedy) for m, nv, d in shapes]
        return cases
    if name == "dry-run":
        shapes = [("tiny-a", 48, 32), ("tiny-b", 80, 48)]
        cases = [Case(m, nv, d, 5, 0.25, b, 1.0, providers) for b in (1, 3) for m, nv, d in shapes]
        greedy = tuple(p for p in providers if p != "torch_compile")
        cases += [Case("tiny-a", 48, 32, 5, 0.25, 2, 0.5, greedy)]
        return cases
    raise ValueError(f"unknown preset {name!r}")


def sweep_cases(args: argparse.Namespace, providers: tuple[str, ...]) -> list[Case]:
    """The default sweep: every model shape x N_T x keep ratio, ``--batches`` items per call."""
    shapes = [(m, nv, d) for m, sh in MODEL_SHAPES.items() for nv, d in sh]
    text_lengths, keep_ratios = TEXT_LENGTHS, KEEP_RATIOS
    if args.quick:
        shapes = [(m, nv, d) for m, nv, d in shapes if nv <= 4096]
        text_lengths, keep_ratios = (16, 256), (0.25,)
    if args.max_visual:
        shapes = [s for s in shapes if s[1] <= args.max_visual]
    return [Case(m, nv, d, nt, r, b, args.mi_lambda, providers)
            for m, nv, d in shapes for nt in text_lengths for r in keep_ratios
            for b in args.batches]  # fmt: skip


def make_batch(case: Case, dtype: torch.dtype, device: str):
    """Back-to-back items in one buffer (views), their questions and budgets."""
    g = torch.Generator(device=device).manual_seed(case.n_visual + case.batch)
    buffer = torch.randn(case.batch * case.n_visual, case.dim, device=device, generator=g)
    buffer = buffer.to(dtype)
    visuals = list(buffer.split(case.n_visual))
    texts = [torch.randn(case.n_text, case.dim, device=device, generator=g).to(dtype)
             for _ in range(case.batch)]  # fmt: skip
    ks = [n_keep(case.n_visual, keep_ratio=case.keep_ratio)] * case.batch
    return visuals, texts, ks


def provider_fn(name: str, case: Case, compiled_oracle):
    """``fn(visuals, texts, ks) -> list of kept indices`` for one provider."""
    lam = case.mi_lambda
    if name == "triton":
        from mipruner_vllm.kernels.launch import mi_prune

        return lambda vs, ts, ks: mi_prune(vs, ts, ks, [TAU] * len(vs), [lam] * len(vs)).indices
    if name == "torch":
        return lambda vs, ts, ks: [reference.select_mi(v, t, k, lam, TAU)
                                   for v, t, k in zip(vs, ts, ks, strict=True)]  # fmt: skip
    if name == "torch_compile":
        return lambda vs, ts, ks: [compiled_oracle(v, t, k, lam)
                                   for v, t, k in zip(vs, ts, ks, strict=True)]  # fmt: skip
    raise ValueError(f"unknown provider {name!r}")


def _oracle(visual: torch.Tensor, text: torch.Tensor, k: int, mi_lambda: float) -> torch.Tensor:
    return reference.select_mi(visual, text, k, mi_lambda, TAU)


def write_markdown(path: Path, rows: list[BenchmarkRow], header: dict[str, str]) -> None:
    """A short table: one line per case, p50 per provider, Triton's bandwidth and speed-ups."""
    lines = [f"# {header.pop('title')}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| model | N_V x d | N_T | keep | batch | lambda | triton ms | torch ms "
              "| torch.compile ms | triton GB/s | triton % of peak | vs torch "
              "| vs compile | notes |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    cases: dict[tuple, dict[str, BenchmarkRow]] = {}
    for r in rows:
        key = (r.model, r.n_visual, r.dim, r.n_text, r.keep_ratio, r.batch, r.mi_lambda)
        cases.setdefault(key, {})[r.provider] = r

    def ms(r: BenchmarkRow | None) -> str:
        return "" if r is None or r.ms_p50 != r.ms_p50 else f"{r.ms_p50:.3f}"

    def ratio(a: BenchmarkRow | None, b: BenchmarkRow | None) -> str:
        if a is None or b is None or not a.ms_p50 > 0 or not b.ms_p50 > 0:
            return ""
        return f"{b.ms_p50 / a.ms_p50:.1f}x"

    for (model, n_v, dim, n_t, keep, batch, lam), by in cases.items():
        tri, eager, comp = by.get("triton"), by.get("torch"), by.get("torch_compile")
        gbps = f"{tri.achieved_gbps:.3g}" if tri and isinstance(tri.achieved_gbps, float) else ""
        share = (f"{100 * tri.peak_share:.1f}"
                 if tri and isinstance(tri.peak_share, float) else "")  # fmt: skip
        notes = "; ".join(f"{p}: {r.note}" for p, r in by.items() if r.note)
        lines.append(
            f"| {model} | {n_v} x {dim} | {n_t} | {keep:g} | {batch} | {lam:g} "
            f"| {ms(tri)} | {ms(eager)} | {ms(comp)} | {gbps} | {share} "
            f"| {ratio(tri, eager)} | {ratio(tri, comp)} | {notes} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=["gpu-check", "dry-run"], default=None,
                        help="a fixed matrix instead of the sweep (see preset_cases)")  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small subset: one shape per model, N_T 16 and 256, keep 25%%",
    )
    parser.add_argument("--providers", default="triton,torch,torch_compile")
    parser.add_argument(
        "--mi-lambda", type=float, default=1.0, help="1.0: one-pass top-k; < 1: the greedy search"
    )
    parser.add_argument("--batches", default="1", help="items per call, comma-separated (sweep)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument(
        "--repeats", type=int, default=3, help="CPU timer repeats (GPU uses do_bench)"
    )
    parser.add_argument(
        "--max-visual", type=int, default=None, help="skip items with more visual tokens"
    )
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the torch_compile provider")  # fmt: skip
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="skip (and record as skipped) what would run past this many "
                             "seconds")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "mi_select.csv")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a short table")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]

    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    dtype = getattr(torch, args.dtype)
    wanted = tuple(args.providers.split(","))
    if "triton" in wanted and device != "cuda" and not interpreted:
        print("triton: not measured (no CUDA device; TRITON_INTERPRET=1 runs it, not as a figure)")
        wanted = tuple(p for p in wanted if p != "triton")
    cases = preset_cases(args.preset, wanted) if args.preset else sweep_cases(args, wanted)
    compiled = (torch.compile(_oracle, dynamic=True, backend=args.compile_backend)
                if "torch_compile" in wanted else None)  # fmt: skip
    peak, peak_source = peak_bandwidth()
    dev_name = device_name(device)
    driver = driver_version()
    size = torch.tensor([], dtype=dtype).element_size()
    print(f"device: {dev_name}; driver {driver}; torch {torch.__version__} (CUDA "
          f"{torch.version.cuda}); triton {triton_version()}; dtype {args.dtype}; peak bandwidth "
          f"{'unknown' if peak is None else f'{peak / 1e9:.0f} GB/s'} ({peak_source})")  # fmt: skip
    if interpreted:
        print("TRITON_INTERPRET=1: triton times are the interpreter's, not a performance figure")
    print(f"{'provider':<14} {'model':<20} {'N_V':>6} {'d':>5} {'N_T':>4} {'B':>3} {'lam':>4} "
          f"{'p50 ms':>10} {'GB/s':>7} {'%peak':>6}  note")  # fmt: skip
    rows: list[BenchmarkRow] = []
    for case in cases:
        spent = args.time_budget_s is not None and time.monotonic() - started >= args.time_budget_s
        # Past the budget no inputs are made (a video batch is gigabytes): rows say "skipped".
        visuals, texts, ks = ([], [], []) if spent else make_batch(case, dtype, device)
        moved = case.batch * (case.n_visual + case.n_text) * case.dim * size
        bench = ("mi_select" if case.mi_lambda >= 1.0
                 else f"mi_greedy(lambda={case.mi_lambda})")  # fmt: skip
        for name in case.providers:
            fn = provider_fn(name, case, compiled)
            note = "interpreter" if name == "triton" and interpreted else ""
            p50 = p20 = p80 = float("nan")
            left = (
                None
                if args.time_budget_s is None
                else args.time_budget_s - (time.monotonic() - started)
            )
            try:
                if left is not None and left <= 0:
                    raise TimeoutError("time budget spent")
                # One untimed call: compiles, and says whether timing fits the budget.
                t0 = time.perf_counter()
                fn(visuals, texts, ks)
                if device == "cuda":
                    torch.cuda.synchronize()
                once = time.perf_counter() - t0
                if left is not None and 8 * once > left - once:
                    raise TimeoutError(f"one call took {once:.2f} s, over the time budget left")
                p50, p20, p80 = time_ms(lambda fn=fn, a=(visuals, texts, ks): fn(*a), device,
                                        repeats=args.repeats)  # fmt: skip
            except TimeoutError as exc:
                note = f"skipped: {exc}"
            except Exception as exc:  # noqa: BLE001 - record the failure, keep benchmarking
                note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            gbps = moved / (p50 * 1e-3) / 1e9 if p50 == p50 and p50 > 0 else None
            share = gbps * 1e9 / peak if gbps is not None and peak else None
            row = BenchmarkRow(
                bench, name, case.model, case.n_visual, case.dim, case.n_text, case.keep_ratio,
                args.dtype, round(p50, 4), round(p20, 4), round(p80, 4), note, dev_name,
                batch=case.batch, mi_lambda=case.mi_lambda, bytes_moved=moved,
                achieved_gbps="" if gbps is None else round(gbps, 1),
                peak_share="" if share is None else round(share, 4), driver=driver,
            )  # fmt: skip
            rows.append(row)
            print(f"{name:<14} {case.model:<20} {case.n_visual:>6} {case.dim:>5} {case.n_text:>4} "
                  f"{case.batch:>3} {case.mi_lambda:>4g} {p50:>10.3f} "
                  f"{'' if gbps is None else f'{gbps:.3g}':>7} "
                  f"{'' if share is None else f'{100 * share:.1f}':>6}  {note}",
                  flush=True)  # fmt: skip
        del visuals, texts
    append_rows(args.out, rows)
    print(f"appended {len(rows)} rows to {args.out}")
    if args.markdown:
        write_markdown(args.markdown, rows, {
            "title": "MI-Pruner selection benchmark",
            "device": dev_name, "driver": driver,
            "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
            "triton": triton_version(), "dtype": args.dtype,
            "peak DRAM bandwidth": ("unknown" if peak is None
                                    else f"{peak / 1e9:.0f} GB/s ({peak_source})"),
            "traffic": "compulsory bytes of one call: every item's V and T read once",
            "commit": rows[0].commit if rows else "",
        })  # fmt: skip
        print(f"wrote {args.markdown}")
    failed = [r for r in rows if r.note.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
