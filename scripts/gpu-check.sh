#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The GPU check of the Triton kernels, in one command, for a CUDA machine that has Python (3.10+),
# torch and Triton (3.6 or later) but no vLLM and no network. Under 8 minutes on an H100/H200.
#
#   bash scripts/gpu-check.sh [--out DIR]        # on the CUDA machine
#   bash scripts/gpu-check.sh --dry-run          # CPU: same steps, tiny shapes, Triton interpreter
#   options: --python PY, --wheels DIR, --budget-s S (450), --fresh-triton-cache
#
# Steps:
#   1. report the machine: GPU, driver, Python, torch (and its CUDA), Triton;
#   2. install what the machine lacks into a scratch folder put first on PYTHONPATH (nothing is
#      installed into the machine's Python): the wheels of scripts/gpu-check-requirements.txt
#      (pydantic, pydantic-settings, pytest, ...; fetch them beforehand with
#      scripts/fetch-gpu-check-wheels.sh into wheelhouse/gpu-check/) when they are not importable,
#      then this checkout itself with `pip install --no-deps`;
#   3. the kernel tests natively on CUDA: tests/kernel/test_gpu.py (parity with the torch oracle
#      at real sizes, bf16/fp16/fp32, varlen batches of 1-64 items, N_V to 16,384, lambda 1 and
#      < 1, the dispatcher's report, the warm-up) plus the interpreter parity suites;
#   4. the kernel benchmark (benchmarks/bench_mi_select.py --preset gpu-check): Triton vs eager
#      torch vs torch.compile at LLaVA-1.5, Qwen2.5-VL image and video shapes, batches 1/8/32,
#      achieved bandwidth as a share of the GPU's peak, within what is left of the time budget.
#
# Writes to --out (default benchmarks/results; a temporary folder for --dry-run):
#   mi_select_gpu_check.csv  one row per measurement (device, driver, torch, Triton in each row)
#   mi_select_gpu_check.md   the short table: machine and versions, test result, benchmark
#   gpu_check_tests.log      the pytest output
# Exits non-zero when a test failed or a benchmark row failed (both are still written).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY_RUN=0
FRESH_CACHE=0
OUT=""
PYTHON=${PYTHON:-}
WHEELS=${GPU_CHECK_WHEELS:-$ROOT/wheelhouse/gpu-check}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
usage() { sed -n '3,28p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT=$2; shift ;;
    --python) PYTHON=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    --budget-s) BUDGET_S=$2; shift ;;
    --fresh-triton-cache) FRESH_CACHE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$PYTHON" ]; then
  if [ "$DRY_RUN" = 1 ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# An absolute path: the steps after the install run outside the checkout.
case "$PYTHON" in
  */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;;
  *) PYTHON=$(command -v "$PYTHON") ;;
esac
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mipruner-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -z "$OUT" ]; then
  if [ "$DRY_RUN" = 1 ]; then OUT=$WORK/out; else OUT=$ROOT/benchmarks/results; fi
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/mi_select_gpu_check.csv
MD=$OUT/mi_select_gpu_check.md
LOG=$OUT/gpu_check_tests.log
rm -f "$CSV" "$MD" "$LOG"
step() { echo; echo "== gpu-check [$(( $(date +%s) - START )) s]: $*"; }

if [ "$DRY_RUN" = 1 ]; then
  # The interpreter on CPU tensors; the tests' dry-run shapes; torch.compile without inductor's
  # C++ build (the dry run checks the plumbing, not the speed).
  export TRITON_INTERPRET=1 MIPRUNER_TEST_GPU_CHECK=dry-run
  TESTS=("$ROOT/tests/kernel/test_gpu.py")
  BENCH=(--preset dry-run --compile-backend eager)
else
  unset TRITON_INTERPRET MIPRUNER_TEST_GPU_CHECK
  TESTS=("$ROOT"/tests/kernel/{test_gpu,test_mi_select,test_mi_greedy}.py)
  BENCH=(--preset gpu-check)
fi
# Triton's default cache is kept (it may hold launcher stubs that need a C compiler to rebuild);
# --fresh-triton-cache compiles everything anew in a scratch cache.
if [ "$FRESH_CACHE" = 1 ]; then export TRITON_CACHE_DIR=$WORK/triton-cache; fi
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}

step "machine"
"$PYTHON" - "$DRY_RUN" <<'PY'
import platform, sys
dry = sys.argv[1] == "1"
print("python", platform.python_version(), sys.executable)
try:
    import torch
except ImportError:
    sys.exit("gpu-check: torch is not importable by this Python; pass --python")
print("torch", torch.__version__, "CUDA", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    sys.exit("gpu-check: triton is not importable by this Python")
# Triton builds its CUDA launcher stubs with a C compiler and Python's headers (then caches them).
import shutil, sysconfig
from pathlib import Path
cc = shutil.which("gcc") or shutil.which("clang")
headers = (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
print(f"C compiler: {cc or 'none found'}; Python.h: {'found' if headers else 'missing'}")
if not (cc and headers) and not dry:
    print("warning: Triton needs a C compiler and Python.h for launchers not in its cache")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB,"
          f" {p.multi_processor_count} SMs; {torch.cuda.device_count()} device(s)")
elif not dry:
    sys.exit("gpu-check: no CUDA device visible to torch (use --dry-run on a CPU machine)")
else:
    print("no CUDA device: dry run on CPU with the Triton interpreter")
    try:
        import numpy
        old_triton = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7)
        if old_triton and tuple(int(x) for x in numpy.__version__.split(".")[:2]) >= (2, 4):
            print(f"warning: Triton {triton.__version__}'s interpreter fails with numpy "
                  f"{numpy.__version__} (seen with 3.6.0 and 2.4.6; numpy 2.3 works)")
    except (ImportError, ValueError):
        pass
PY
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv || true
fi

step "install into $WORK/site (nothing goes into $PYTHON's own site-packages)"
SITE=$WORK/site
mkdir -p "$SITE"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
PIP=("$PYTHON" -m pip --disable-pip-version-check --no-input)
# setuptools >= 70.1 builds wheels without the separate `wheel` package.
if "$PYTHON" -c "import pydantic, pydantic_settings, pytest, setuptools
assert tuple(int(x) for x in setuptools.__version__.split('.')[:2]) >= (70, 1)" 2>/dev/null; then
  echo "pydantic, pydantic-settings, pytest and setuptools >= 70.1 are importable: no wheels needed"
else
  if [ ! -d "$WHEELS" ]; then
    echo "gpu-check: some dependencies are missing and there is no wheel folder $WHEELS" >&2
    echo "  run 'bash scripts/fetch-gpu-check-wheels.sh' on a machine with network and bring" >&2
    echo "  wheelhouse/gpu-check/ along (or pass --wheels DIR)" >&2
    exit 3
  fi
  "${PIP[@]}" install -q --no-index --find-links "$WHEELS" --target "$SITE" \
    -r scripts/gpu-check-requirements.txt
fi
# The checkout itself, as users install it, without its dependencies (vLLM, prometheus-client and
# typer are not needed by the kernels and their tests). Built with the setuptools found above (no
# download) from a copy of the package sources, so no stale build/ folder can leak old modules
# into the install and the checkout is left as it was.
SRC=$WORK/src
mkdir -p "$SRC"
cp -R "$ROOT"/pyproject.toml "$ROOT"/README.md "$ROOT"/mipruner_vllm "$ROOT"/kernels "$ROOT"/server "$SRC"/
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$SITE/bin"  # the wheels' console scripts: unused (python -m), and pip warns on a second bin/
"${PIP[@]}" install -q --no-deps --no-index --no-build-isolation --target "$SITE" "$SRC"
# From here on Python runs outside the checkout: its source folder mipruner_vllm/ (first on
# sys.path when run from the root) lacks the kernels and server that the install maps into it.
cd "$WORK"
"$PYTHON" - "$SITE" <<'PY'
import sys
import mipruner_vllm, mipruner_vllm.kernels.launch as launch
print("installed", mipruner_vllm.__file__, "| launcher", launch.__file__)
if not launch.__file__.startswith(sys.argv[1]):
    sys.exit(f"gpu-check: the kernels come from {launch.__file__}, not from the install")
PY

step "kernel tests: ${TESTS[*]#"$ROOT/"}"
set +e
"$PYTHON" -m pytest -p no:cacheprovider -q -rfEs "${TESTS[@]}" 2>&1 | tee "$LOG"
TESTS_RC=${PIPESTATUS[0]}
set -e
TESTS_SUMMARY=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$LOG" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')

ELAPSED=$(( $(date +%s) - START ))
LEFT=$(( BUDGET_S - ELAPSED ))
[ "$LEFT" -gt 30 ] || LEFT=30
step "kernel benchmark (${BENCH[*]}), time budget ${LEFT} s"
BENCH_RC=0
"$PYTHON" "$ROOT/benchmarks/bench_mi_select.py" "${BENCH[@]}" --out "$CSV" --markdown "$MD" \
  --time-budget-s "$LEFT" || BENCH_RC=$?

{
  echo
  echo "## Tests"
  echo
  echo "- \`pytest ${TESTS[*]#"$ROOT/"}\`: ${TESTS_SUMMARY:-no summary line (see gpu_check_tests.log)} (exit $TESTS_RC)"
  echo "- total time of the check: $(( $(date +%s) - START )) s$([ "$DRY_RUN" = 1 ] && echo ' (CPU dry run: interpreter, tiny shapes)')"
} >> "$MD"
step "done: $CSV, $MD, $LOG"
cat "$MD"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
