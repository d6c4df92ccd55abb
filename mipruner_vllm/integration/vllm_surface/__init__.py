# SPDX-License-Identifier: Apache-2.0
"""The vLLM boundary: every vLLM name the plugin touches, why, the check of it, and the patch.

One module per concern, so "what do we use of vLLM" and "what do we change in vLLM" are each one
file away:

* :mod:`.declaration`: the table (:data:`SURFACE`), every key and location written literally,
  release-aware where a release moved or removed a name; rendered in ``docs/vllm-support.md``;
* :mod:`.source_check`: the check of the table against vLLM's source (installed or a release
  wheel), the load-time check and its per-install marker;
* :mod:`.releases`: the supported range (the ``vllm`` extra), which entries a release needs, and
  :func:`resolve`, the one place that imports a name that moved;
* :mod:`.patches`: the one runtime patch mechanism (only names declared as patches).

Importing this package imports neither vLLM nor torch.
"""

from mipruner_vllm.integration.vllm_surface.declaration import (
    SURFACE,
    SURFACE_BY_KEY,
    Use,
    VllmName,
    markdown_table,
)
from mipruner_vllm.integration.vllm_surface.patches import PATCHES, AppliedPatch, apply_patch
from mipruner_vllm.integration.vllm_surface.releases import (
    FALLBACK_VLLM_RANGE,
    installed_vllm_version,
    is_supported,
    needed,
    resolve,
    supported_vllm_range,
)
from mipruner_vllm.integration.vllm_surface.source_check import (
    SurfaceProblem,
    VllmSource,
    check,
    check_installed,
    resolved_location,
    surface_error,
)

__all__ = [
    "FALLBACK_VLLM_RANGE",
    "PATCHES",
    "SURFACE",
    "SURFACE_BY_KEY",
    "AppliedPatch",
    "SurfaceProblem",
    "Use",
    "VllmName",
    "VllmSource",
    "apply_patch",
    "check",
    "check_installed",
    "installed_vllm_version",
    "is_supported",
    "markdown_table",
    "needed",
    "resolve",
    "resolved_location",
    "supported_vllm_range",
    "surface_error",
]
