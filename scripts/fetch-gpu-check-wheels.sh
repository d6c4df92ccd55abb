#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Download, on a machine with network, the wheels scripts/gpu-check.sh installs on a CUDA machine
# without network (Python 3.12, manylinux x86_64): scripts/gpu-check-requirements.txt, pinned with
# hashes, into wheelhouse/gpu-check/ (about 6 MiB, git-ignored). Carry that folder to the GPU
# machine with the checkout. Usage: bash scripts/fetch-gpu-check-wheels.sh [DEST]
# GPU_CHECK_PYTHON=3.11 fetches for a Python 3.11 machine instead.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-wheelhouse/gpu-check}
PYTHON=${PYTHON:-python3}
TARGET=${GPU_CHECK_PYTHON:-3.12}
ABI=cp${TARGET/./}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
mkdir -p "$DEST"
"$PYTHON" -m pip --disable-pip-version-check download -q --no-deps --only-binary=:all: \
  --python-version "$TARGET" --implementation cp --abi "$ABI" \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$DEST" -r scripts/gpu-check-requirements.txt
echo "wheels for the GPU check in $DEST ($(du -sh "$DEST" | cut -f1)):"
ls "$DEST"
