# SPDX-License-Identifier: Apache-2.0
"""Greedy MI-Pruner benchmark (lambda < 1, kernels/mi_greedy.py): bench_mi_select.py with
``--mi-lambda 0.5`` and ``benchmarks/results/mi_greedy.csv`` as defaults (both can be overridden).

    python benchmarks/bench_mi_greedy.py --quick --batches 1,8
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_mi_select import main  # noqa: E402
from utils import RESULTS_DIR  # noqa: E402

if __name__ == "__main__":
    # argparse keeps the last value of a flag, so the user's own flags win over these defaults.
    sys.exit(
        main(["--mi-lambda", "0.5", "--out", str(RESULTS_DIR / "mi_greedy.csv"), *sys.argv[1:]])
    )
