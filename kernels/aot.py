# SPDX-License-Identifier: Apache-2.0
"""Ahead-of-time compile check of every kernel configuration, no GPU needed.

``python -m mipruner_vllm.kernels --aot sm_80,sm_90`` builds each kernel for each target with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` (Triton's full pipeline:
TTIR -> TTGIR -> LLVM -> PTX -> ``ptxas`` -> cubin, all on the CPU), then reports per kernel
configuration the registers per thread, spill stores/loads (``ptxas -v`` on the same PTX) and
shared memory (Triton's metadata, which is what the launch requests). Any compile failure
exits non-zero; spills are flagged in the table (and fail the run with ``--fail-on-spills``).

The configurations are exactly the ones the launchers can pick (dtype x text tile, see
:func:`configurations`); the signatures use the argument types the launchers pass. The JIT on a
real GPU additionally specialises pointers and ints divisible by 16, which can only lower
register use, so this is the conservative build.

It must run with ``TRITON_INTERPRET`` unset: under the interpreter ``@triton.jit`` returns
interpreted functions that cannot be compiled. The CLI clears the variable for itself before it
imports the kernel modules.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

#: Triton pointer types of the three supported input dtypes.
_DTYPES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class KernelConfig:
    """One kernel specialisation: the function, its argument types and constexpr values."""

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int

    @property
    def label(self) -> str:
        keys = ("BLOCK_T", "STORE_GRAM", "USE_GRAM")
        shown = {k: v for k, v in self.constexprs.items() if k in keys}
        dtype = self.signature.get("V_ptr", "")[1:] or "-"
        extra = " ".join(f"{k}={v}" for k, v in shown.items())
        return f"{self.name}[{dtype}{' ' + extra if extra else ''}]"


def _sig(fn: Any, types: dict[str, str], constexprs: dict[str, Any]) -> dict[str, str]:
    """Full signature in argument order: explicit types, ``*fp32`` for other pointers."""
    sig = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in types:
            sig[arg] = types[arg]
        elif arg.endswith("_ptr"):
            sig[arg] = "*fp32"
        else:
            sig[arg] = "i32"
    return sig


def configurations() -> list[KernelConfig]:
    """Every (kernel, dtype, tile) the launchers of mi_select / mi_greedy can launch."""
    from mipruner_vllm.kernels import mi_greedy as g
    from mipruner_vllm.kernels import mi_select as s

    index = {
        "BLOCK_ITEM_ptr": "*i32", "BLOCK_ROW_ptr": "*i32", "ITEMS_ptr": "*i32", "K_ptr": "*i32",
        "V_OFF_ptr": "*i64", "T_OFF_ptr": "*i64", "L_OFF_ptr": "*i64", "P_OFF_ptr": "*i64",
        "OUT_OFF_ptr": "*i64", "OUT_ptr": "*i64", "AGG_ptr": "*i32", "GRAM_OFF_ptr": "*i64",
    }  # fmt: skip
    configs: list[KernelConfig] = []

    kernels = {**s.KERNELS, **g.KERNELS}

    def add(name: str, types: dict[str, str], constexprs: dict[str, Any], num_warps: int) -> None:
        fn = kernels[name]
        configs.append(
            KernelConfig(name, fn, _sig(fn, {**index, **types}, constexprs), constexprs, num_warps)
        )

    for dtype in _DTYPES:
        tensors = {"V_ptr": f"*{dtype}", "T_ptr": f"*{dtype}"}
        fp32 = dtype == "fp32"
        for block_t in s.TEXT_BLOCKS:
            add("mi_cross_logits", tensors,
                {"BLOCK_V": s.BLOCK_V, "BLOCK_T": block_t, "BLOCK_D": s.BLOCK_D,
                 "FP32_INPUT": fp32, "UPCAST_DOT": False}, s.DOT_NUM_WARPS)  # fmt: skip
        for gram in (True, False):  # rho_self cached for the steps, or a GEMV per step
            add("mi_self_lse", tensors,
                {"BLOCK_V": s.BLOCK_V, "BLOCK_C": g.BLOCK_C, "BLOCK_D": s.BLOCK_D,
                 "FP32_INPUT": fp32, "UPCAST_DOT": False, "STORE_GRAM": gram},
                s.DOT_NUM_WARPS)  # fmt: skip
            add("mi_greedy", tensors,
                {"BLOCK_R": g.BLOCK_R, "BLOCK_D": g.BLOCK_DG, "USE_GRAM": gram},
                g.GREEDY_NUM_WARPS)  # fmt: skip
    for block_t in s.TEXT_BLOCKS:
        add("mi_marginal", {}, {"BLOCK_V": s.BLOCK_V, "BLOCK_T": block_t}, 1)
        add(
            "mi_score",
            {},
            {"BLOCK_V": s.BLOCK_V, "BLOCK_T": block_t},
            s.SCORE_NUM_WARPS,
        )
    add("topk", {}, {"BLOCK_N": s.BLOCK_N}, 4)
    return configs


@dataclass(frozen=True)
class AotResult:
    config: KernelConfig
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int
    seconds: float


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int, int]:
    """``(registers, spill store bytes, spill load bytes)`` from ``ptxas -v`` on the PTX."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/kernel.ptx"
        with open(src, "w") as f:
            f.write(ptx)
        # Same register-allocation flag Triton passes (works around a ptxas 13 bug).
        cmd = [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", src,
               "-o", f"{tmp}/kernel.o"]  # fmt: skip
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    regs = _PTXAS_REGS.search(log)
    spill = _PTXAS_SPILL.search(log)
    if regs is None or spill is None:
        raise RuntimeError(f"could not parse ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spill.group(1)), int(spill.group(2))


def compile_config(config: KernelConfig, arch: int) -> AotResult:
    """Compile one configuration for ``sm_<arch>``; raises on any compiler error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    src = ASTSource(config.fn, signature=config.signature, constexprs=config.constexprs)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": config.num_warps}
    )
    if "cubin" not in compiled.asm:
        raise RuntimeError(f"{config.label}: no cubin produced for sm_{arch}")
    registers, stores, loads = _ptxas_report(compiled.asm["ptx"], arch)
    return AotResult(
        config,
        arch,
        registers,
        stores,
        loads,
        compiled.metadata.shared,
        time.perf_counter() - start,
    )


def parse_targets(spec: str) -> list[int]:
    """``"sm_80,sm_90"`` -> ``[80, 90]``."""
    archs = []
    for part in spec.split(","):
        part = part.strip().lower()
        match = re.fullmatch(r"(?:sm_?)?(\d+)a?", part)
        if match is None:
            raise ValueError(f"bad target {part!r}; expected e.g. sm_80,sm_90")
        archs.append(int(match.group(1)))
    return archs


def run_aot(archs: list[int], out: Any = None, *, fail_on_spills: bool = False) -> int:
    """Compile every configuration for every target, print a table, return the exit status."""
    import sys

    out = out or sys.stdout
    failures = spills = 0
    header = (
        f"{'target':<7} {'kernel configuration':<46} {'warps':>5} {'regs':>5} "
        f"{'spill st/ld B':>13} {'shared B':>9} {'s':>5}"
    )
    print(header, file=out)
    print("-" * len(header), file=out)
    for arch in archs:
        for config in configurations():
            try:
                r = compile_config(config, arch)
            except Exception as exc:  # noqa: BLE001 - report every failure, then exit non-zero
                failures += 1
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                print(
                    f"sm_{arch:<4} {config.label:<46} FAILED: {type(exc).__name__}: {first}",
                    file=out,
                )
                continue
            spilled = bool(r.spill_stores or r.spill_loads)
            spills += spilled
            failures += spilled and fail_on_spills
            print(
                f"sm_{arch:<4} {config.label:<46} {config.num_warps:>5} {r.registers:>5} "
                f"{f'{r.spill_stores}/{r.spill_loads}':>13} {r.shared:>9} {r.seconds:>5.1f}"
                + ("  SPILLS" if spilled else ""),
                file=out,
            )
            out.flush()
    total = len(archs) * len(configurations())
    print(
        f"{total - failures}/{total} configurations OK ({spills} with spills) for "
        + ",".join(f"sm_{a}" for a in archs),
        file=out,
    )
    return 1 if failures else 0
