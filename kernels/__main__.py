# SPDX-License-Identifier: Apache-2.0
"""``python -m mipruner_vllm.kernels --aot sm_80,sm_90``: AOT compile check (no GPU needed)."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mipruner_vllm.kernels", description=__doc__)
    parser.add_argument(
        "--aot",
        metavar="TARGETS",
        required=True,
        help="comma-separated CUDA targets to compile every kernel for, e.g. sm_80,sm_90",
    )
    parser.add_argument(
        "--fail-on-spills", action="store_true", help="also exit non-zero on register spills"
    )
    args = parser.parse_args(argv)
    # The interpreter replaces @triton.jit functions with uncompilable ones; this must happen
    # before the kernel modules are imported (aot imports them lazily).
    os.environ.pop("TRITON_INTERPRET", None)
    from mipruner_vllm.kernels.aot import parse_targets, run_aot

    try:
        archs = parse_targets(args.aot)
    except ValueError as exc:
        parser.error(str(exc))
    return run_aot(archs, fail_on_spills=args.fail_on_spills)


if __name__ == "__main__":
    sys.exit(main())
