# SPDX-License-Identifier: Apache-2.0
"""The torchvision fix-up of scripts/setup.sh acts in every fresh Python process of the venv."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mipruner_vllm import _torchvision_compat

pytestmark = pytest.mark.env


def test_pth_hook_is_installed_in_this_environment():
    pth = Path(sysconfig.get_paths()["purelib"]) / _torchvision_compat.PTH_NAME
    assert pth.read_text() == _torchvision_compat.PTH_LINE


def test_fresh_process_imports_torchvision_and_transforms_work():
    # A new interpreter (like vLLM's spawned engine and workers) gets the hook from the .pth.
    code = (
        "import torch, torchvision\n"
        "from torchvision.transforms import v2\n"
        "x = torch.zeros(3, 20, 30, dtype=torch.uint8)\n"
        "print(tuple(v2.Resize((10, 15))(x).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(3, 10, 15)"


def test_hook_only_acts_on_cpu_torch_with_a_cuda_torchvision():
    import torch

    if torch.version.cuda is not None:
        assert not _torchvision_compat._needs_schemas()
    else:
        import importlib.metadata

        cuda_wheel = "+cpu" not in importlib.metadata.version("torchvision")
        assert _torchvision_compat._needs_schemas() == cuda_wheel


def test_broken_package_never_breaks_interpreter_start(tmp_path):
    # The .pth line swallows import errors: a leftover .pth after uninstalling must be harmless.
    (tmp_path / "leftover.pth").write_text(
        _torchvision_compat.PTH_LINE.replace("mipruner_vllm", "no_such_pkg")
    )
    code = f"import site; site.addsitedir({str(tmp_path)!r}); print('alive')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "alive", out.stderr


def test_torchaudio_and_torchcodec_are_not_installed():
    import importlib.util

    assert importlib.util.find_spec("torchaudio") is None
    assert importlib.util.find_spec("torchcodec") is None
