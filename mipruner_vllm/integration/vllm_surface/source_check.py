# SPDX-License-Identifier: Apache-2.0
"""The check of the declaration against vLLM's source, and the load-time check.

A moved name fails quietly: an overridden hook that vLLM renamed is simply never called again
(``usage`` would report 0 visual tokens, say) instead of raising. So the declaration is checked

* when the plugin loads (:func:`check_installed`, called by :func:`mipruner_vllm.plugin.register`
  in every vLLM process): a missing name or a changed signature of an overridden method raises
  :class:`~mipruner_vllm.errors.UnsupportedVllmError` naming each problem and the vLLM version;
  a marker file per vLLM install (:func:`_checked_marker`) spares the next processes the parse;
* against any vLLM release without installing it (``scripts/check_vllm_surface.py`` reads the
  release wheel's source), which is how a new release is qualified.

The check reads vLLM's *source* (Python's ``ast``) instead of importing it, so one code path
serves the installed package and an unopened wheel, and checking costs no model imports in the
processes where the plugin loads. Release-aware entries are checked for the release the source
is: an entry outside its ``releases`` is skipped, and only the locations for that release count.

This module imports neither vLLM nor torch at import time.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from mipruner_vllm.errors import UnsupportedVllmError
from mipruner_vllm.integration.vllm_surface import releases
from mipruner_vllm.integration.vllm_surface.declaration import SURFACE, VllmName

logger = logging.getLogger(__name__)


class VllmSource:
    """Reads vLLM's modules as source, from an installed package or from a release wheel.

    ``read(module)`` returns the module's source text, or None when the module does not exist.
    """

    def __init__(self, read: Callable[[str], str | None], version: str) -> None:
        self._read = read
        self.version = version
        self._trees: dict[str, ast.Module | None] = {}

    @classmethod
    def installed(cls) -> VllmSource:
        import vllm

        root = Path(vllm.__file__).parent.parent

        def read(relative: str) -> str | None:
            path = root / relative
            return path.read_text(encoding="utf-8") if path.is_file() else None

        return cls(read, releases.installed_vllm_version())

    @classmethod
    def wheel(cls, path: str | Path) -> VllmSource:
        archive = zipfile.ZipFile(path)
        names = set(archive.namelist())
        match = re.match(r"vllm-([^-]+)-", Path(path).name)
        version = match.group(1) if match else "unknown"

        def read(relative: str) -> str | None:
            return archive.read(relative).decode("utf-8") if relative in names else None

        return cls(read, version)

    def is_package(self, name: str) -> bool:
        return self._read(name.replace(".", "/") + "/__init__.py") is not None

    def module(self, name: str) -> ast.Module | None:
        if name not in self._trees:
            base = name.replace(".", "/")
            texts = (self._read(f"{base}.py"), self._read(f"{base}/__init__.py"))
            text = next((t for t in texts if t is not None), None)
            self._trees[name] = None if text is None else ast.parse(text)
        return self._trees[name]


def _class_def(tree: ast.Module, name: str) -> ast.ClassDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


def _assigned_names(nodes: Iterable[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            # ``if TYPE_CHECKING:`` / ``try: import ...`` blocks define names too.
            inner = list(node.body) + list(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                inner += handler.body
            names |= _assigned_names(inner)
    return names


def _lazy_exports(tree: ast.Module) -> set[str]:
    """Names a module serves through a module ``__getattr__`` (``vllm.LLM``): its dict keys."""
    if not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        return set()
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys.update(
                k.value
                for k in node.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
    return keys


def _self_attributes(cls: ast.ClassDef) -> set[str]:
    """``self.x = ...`` / ``self.x: T = ...`` anywhere in the class's methods."""
    names: set[str] = set()
    for node in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                names.add(target.attr)
    return names


def _params(function: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    args = function.args
    out = [a.arg for a in args.posonlyargs]
    if args.posonlyargs:
        out.append("/")
    out += [a.arg for a in args.args]
    if args.vararg is not None:
        out.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        out.append("*")
    out += [a.arg for a in args.kwonlyargs]
    if args.kwarg is not None:
        out.append("**" + args.kwarg.arg)
    return tuple(out)


def _module_defines(source: VllmSource, module_name: str, name: str, depth: int = 0) -> bool:
    """``module_name`` defines or re-exports ``name``, following ``from .x import *``."""
    tree = source.module(module_name)
    if tree is None:
        return False
    if name in _assigned_names(tree.body) or name in _lazy_exports(tree):
        return True
    if depth > 3:
        return False
    package = module_name if source.is_package(module_name) else module_name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            parts = [base] if node.level else []
            target = ".".join([*parts, *([node.module] if node.module else [])])
            if _module_defines(source, target, name, depth + 1):
                return True
    return False


def _check_location(
    source: VllmSource, location: str, params: tuple[str, ...] | None, params_prefix: bool = False
) -> str | None:
    """None when ``location`` exists in ``source`` with ``params``; else what is wrong."""
    module_name, _, qualname = location.partition(":")
    tree = source.module(module_name)
    if tree is None:
        return f"module {module_name} not found"
    head, _, member = qualname.partition(".")
    if not member:
        if _module_defines(source, module_name, head):
            return None
        return f"{location} not found"
    cls = _class_def(tree, head)
    if cls is None:
        return f"class {module_name}:{head} not found"
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == member:
            found = _params(node)
            if params is not None and (found[: len(params)] if params_prefix else found) != params:
                expected = ", ".join(params) + (", ..." if params_prefix else "")
                return f"{location} has parameters ({', '.join(found)}), expected ({expected})"
            return None
    if params is None and (member in _assigned_names(cls.body) or member in _self_attributes(cls)):
        return None
    return f"{location} not found"


@dataclasses.dataclass(frozen=True)
class SurfaceProblem:
    name: VllmName
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name.key} ({self.name.use}; {self.name.why}): " + "; ".join(self.reasons)


def resolved_location(source: VllmSource, name: VllmName) -> str | None:
    """The location of ``name`` that ``source`` has, among those for its release; else None."""
    for location in releases.locations_on(name, source.version):
        if _check_location(source, location, name.params, name.params_prefix) is None:
            return location
    return None


def check(source: VllmSource, names: Iterable[VllmName] = SURFACE) -> list[SurfaceProblem]:
    """Every declared name that ``source``'s release needs and lacks (none of the locations for
    that release resolves). Entries whose ``releases`` exclude the release are not checked."""
    problems = []
    for name in names:
        if not releases.needed_on(name, source.version):
            continue
        locations = releases.locations_on(name, source.version)
        reasons = [
            _check_location(source, location, name.params, name.params_prefix)
            for location in locations
        ]
        if not locations:
            reasons = [f"no location declared for vllm=={source.version}"]
        if all(reason is not None for reason in reasons):
            problems.append(SurfaceProblem(name, tuple(r for r in reasons if r is not None)))
    return problems


def surface_error(problems: list[SurfaceProblem], version: str) -> UnsupportedVllmError:
    lines = "\n".join(f"  - {p}" for p in problems)
    spec = releases.supported_vllm_range()
    return UnsupportedVllmError(
        f"mipruner-vllm cannot run on vllm=={version}: {len(problems)} of the vLLM names it relies "
        f"on are missing or changed:\n{lines}\nSupported: vllm{spec} (see docs/vllm-support.md)."
    )


def check_installed(
    skip_version_check: bool = False,
    *,
    source: VllmSource | None = None,
    names: Iterable[VllmName] = SURFACE,
) -> str:
    """The load-time check: the supported range, then every declared name. Returns the version.

    ``skip_version_check`` (``MIPRUNER_SKIP_VERSION_CHECK=1``) lets a release outside the range
    load (with a warning) when its surface still checks out; a missing name is always an error,
    because the plugin cannot work without it. ``source`` and ``names`` are for tests.
    """
    version = releases.installed_vllm_version()
    spec = releases.supported_vllm_range()
    if not releases.is_supported(version, spec):
        if not skip_version_check:
            raise UnsupportedVllmError(
                f"mipruner-vllm supports vllm{spec} but vllm=={version} is installed. Install a "
                f"supported release (pip install 'mipruner-vllm[vllm]'), or set "
                f"MIPRUNER_SKIP_VERSION_CHECK=1 to load the plugin anyway (unsupported)."
            )
        logger.warning(
            "mipruner: vllm==%s is outside the supported range vllm%s; loading anyway because "
            "MIPRUNER_SKIP_VERSION_CHECK is set",
            version,
            spec,
        )
    marker = _checked_marker(version) if source is None else None
    if marker is not None and marker.exists():
        return version
    problems = check(source or VllmSource.installed(), names)
    if problems:
        raise surface_error(problems, version)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass  # a read-only home only costs the re-check in the next process
    return version


def _checked_marker(version: str) -> Path | None:
    """A file that says "this vLLM install passed this surface", so each of the processes vLLM
    starts does not parse its sources again (about 0.2-0.7 s each on 2 cores)."""
    import hashlib
    import os

    import vllm

    root = Path(vllm.__file__).parent
    try:
        stamp = f"{version}|{root}|{root.stat().st_mtime_ns}|{SURFACE!r}"
    except OSError:
        return None
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:20]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mipruner-vllm" / "vllm-surface" / f"{digest}.ok"
