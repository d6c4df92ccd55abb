# SPDX-License-Identifier: Apache-2.0
"""The declared vLLM surface: the checker on made-up vLLM sources, and the project's sources
against the declaration (no vLLM needed)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from mipruner_vllm.errors import UnsupportedVllmError
from mipruner_vllm.families import FAMILIES
from mipruner_vllm.integration import vllm_surface
from mipruner_vllm.integration.vllm_surface import (
    SURFACE,
    SURFACE_BY_KEY,
    VllmName,
    VllmSource,
    check,
    releases,
)
from mipruner_vllm.integration.vllm_surface.declaration import _n

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROJECT_SOURCES = sorted(
    p
    for d in ("mipruner_vllm", "server", "kernels", "benchmarks", "scripts")
    for p in (ROOT / d).rglob("*.py")
)

FAKE_VLLM = {
    "vllm/__init__.py": """
        MODULE_ATTRS = {"LLM": ".entrypoints.llm:LLM"}
        def __getattr__(name): ...
    """,
    "vllm/proc.py": """
        class Base:
            flag: bool = False
            def __init__(self):
                self.executor = None
            def hook(self, mm_items, hf_kwargs): ...
            def keyword_only(self, a, *, cache, scheduler_config): ...
            def spread(self, *args, **kwargs): ...
        REGISTRY = object()
    """,
    "vllm/new_home.py": "def moved(): ...",
    "vllm/dist/__init__.py": "from .state import *",
    "vllm/dist/state.py": "def rank(): ...",
}


def fake_source(files: dict[str, str] = FAKE_VLLM, version: str = "9.9.9") -> VllmSource:
    texts = {k: textwrap.dedent(v) for k, v in files.items()}
    return VllmSource(texts.get, version)


def name(location: str, *more: str, params: tuple[str, ...] | None = None) -> VllmName:
    return VllmName(location, "override" if params else "import", "test", (location, *more), params)


@pytest.mark.parametrize(
    "declared",
    [
        name("vllm:LLM"),  # served by the module's __getattr__ table
        name("vllm.proc:REGISTRY"),
        name("vllm.dist:rank"),  # re-exported by `from .state import *`
        name("vllm.proc:Base"),
        name("vllm.proc:Base.flag"),
        name("vllm.proc:Base.executor"),  # set in __init__
        name("vllm.proc:Base.hook", params=("self", "mm_items", "hf_kwargs")),
        name("vllm.proc:Base.keyword_only", params=("self", "a", "*", "cache", "scheduler_config")),
        name("vllm.proc:Base.spread", params=("self", "*args", "**kwargs")),
        # An override that passes **kwargs on accepts parameters vLLM appends.
        VllmName(
            "k",
            "override",
            "test",
            ("vllm.proc:Base.keyword_only",),
            ("self", "a", "*", "cache"),
            True,
        ),
        name("vllm.new_home:moved", "vllm.old_home:moved"),  # newest location first
        name("vllm.old_home:moved", "vllm.new_home:moved"),  # any order resolves
    ],
)
def test_present_names_pass(declared: VllmName) -> None:
    assert check(fake_source(), [declared]) == []


@pytest.mark.parametrize(
    ("declared", "reason"),
    [
        (name("vllm.gone:Thing"), "module vllm.gone not found"),
        (name("vllm.proc:Missing"), "vllm.proc:Missing not found"),
        (name("vllm.proc:Other.hook"), "class vllm.proc:Other not found"),
        (
            name("vllm.proc:Base.renamed_hook", params=("self",)),
            "vllm.proc:Base.renamed_hook not found",
        ),
        # An override whose base method gained a parameter: ours would not pass it on.
        (
            name("vllm.proc:Base.hook", params=("self", "mm_items")),
            "has parameters (self, mm_items, hf_kwargs)",
        ),
        (
            name("vllm.proc:Base.keyword_only", params=("self", "a", "cache", "scheduler_config")),
            "expected",
        ),
        (
            VllmName(
                "k", "override", "test", ("vllm.proc:Base.keyword_only",), ("self", "b"), True
            ),
            "expected (self, b, ...)",
        ),
    ],
)
def test_missing_or_changed_names_are_reported(declared: VllmName, reason: str) -> None:
    (problem,) = check(fake_source(), [declared])
    assert reason in str(problem)
    error = vllm_surface.surface_error([problem], "9.9.9")
    assert "vllm==9.9.9" in str(error) and declared.key in str(error)


def test_a_removed_override_target_fails_the_load_time_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = dict(FAKE_VLLM, **{"vllm/proc.py": "class Base:\n    pass\n"})
    monkeypatch.setattr(releases, "installed_vllm_version", lambda: "0.32.5")
    declared = [name("vllm.proc:Base.hook", params=("self", "mm_items", "hf_kwargs"))]
    assert vllm_surface.check_installed(source=fake_source(), names=declared) == "0.32.5"
    with pytest.raises(UnsupportedVllmError, match=r"vllm==0\.32\.5(.|\n)*vllm\.proc:Base\.hook"):
        vllm_surface.check_installed(source=fake_source(files, "0.32.5"), names=declared)


def test_version_range_names_every_supported_release(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = vllm_surface.supported_vllm_range()
    for version in ("0.32.0+cpu", "0.33.0", "0.34.0", "0.34.2"):
        assert vllm_surface.is_supported(version, spec), version
    assert not vllm_surface.is_supported("0.31.9", spec)
    assert not vllm_surface.is_supported("0.35.0", spec)
    monkeypatch.setattr(releases, "installed_vllm_version", lambda: "0.40.1")
    with pytest.raises(UnsupportedVllmError, match=r"vllm==0\.40\.1") as err:
        vllm_surface.check_installed()
    assert spec in str(err.value) and "MIPRUNER_SKIP_VERSION_CHECK" in str(err.value)


def test_pyproject_extra_matches_the_fallback_range() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert f"vllm{vllm_surface.FALLBACK_VLLM_RANGE}" in [r.replace(" ", "") for r in extras["vllm"]]


# --- release-aware entries --------------------------------------------------------------------

V1_ONLY = _n("v1", "attribute", "test", "vllm.proc:Base.flag", releases="<0.34")
MOVED = _n(
    "moved",
    "import",
    "test",
    ("vllm.new_home:moved", ">=0.33"),
    ("vllm.old_home:moved", "<0.33"),
)
WITHOUT_BASE = dict(FAKE_VLLM, **{"vllm/proc.py": "class Other:\n    pass\n"})
WITH_OLD_HOME = dict(FAKE_VLLM, **{"vllm/old_home.py": "def moved(): ..."})


@pytest.mark.parametrize(
    ("files", "version", "problem"),
    [
        (FAKE_VLLM, "0.33.2", None),
        # Removed after its last release: fine; missing on a release that needs it: an error.
        (WITHOUT_BASE, "0.34.0", None),
        (WITHOUT_BASE, "0.33.0", "class vllm.proc:Base not found"),
        (WITHOUT_BASE, "0.32.0+cpu", "class vllm.proc:Base not found"),
    ],
)
def test_an_entry_is_required_only_on_its_releases(
    files: dict[str, str], version: str, problem: str | None
) -> None:
    problems = check(fake_source(files, version), [V1_ONLY])
    assert [str(p).rpartition(": ")[2] for p in problems] == ([problem] if problem else [])


@pytest.mark.parametrize(
    ("files", "version", "found"),
    [
        (FAKE_VLLM, "0.33.0", "vllm.new_home:moved"),
        (FAKE_VLLM, "0.34.1", "vllm.new_home:moved"),
        (WITH_OLD_HOME, "0.32.0", "vllm.old_home:moved"),
        # The other release's location does not count, even when it is there.
        (FAKE_VLLM, "0.32.0", None),
        (dict(WITH_OLD_HOME, **{"vllm/new_home.py": "x = 1"}), "0.33.0", None),
        # A source of unknown version accepts any location.
        (FAKE_VLLM, "unknown", "vllm.new_home:moved"),
    ],
)
def test_alternatives_resolve_per_release(
    files: dict[str, str], version: str, found: str | None
) -> None:
    source = fake_source(files, version)
    assert vllm_surface.resolved_location(source, MOVED) == found
    assert bool(check(source, [MOVED])) == (found is None)


def test_resolve_imports_the_location_of_the_installed_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``resolve`` skips a location of another release even when it imports."""
    monkeypatch.setitem(
        SURFACE_BY_KEY,
        "k",
        _n("k", "import", "t", ("vllm_fake_mod:new", ">=0.33"), ("pathlib:Path", "<0.33")),
    )
    releases._installed_version.cache_clear()
    monkeypatch.setattr(releases, "installed_vllm_version", lambda: "0.32.0+cpu")
    assert releases.resolve("k") is Path
    releases._installed_version.cache_clear()
    monkeypatch.setattr(releases, "installed_vllm_version", lambda: "0.34.0")
    with pytest.raises(UnsupportedVllmError, match="vllm_fake_mod"):
        releases.resolve("k")
    assert releases.needed("k")
    releases._installed_version.cache_clear()


def test_v1_runner_names_are_scoped_to_the_releases_that_have_it() -> None:
    """vLLM 0.34 removed Model Runner V1: what only V1 needs says so."""
    v1 = [n for n in SURFACE if any(".gpu_model_runner:" in loc for loc in n.locations)]
    assert v1 and all(n.releases == "<0.34" for n in v1)
    for key in ("CPUWorker", "Worker.load_model", "VllmConfig.use_v2_model_runner"):
        assert SURFACE_BY_KEY[key].releases == "<0.34"


def test_every_key_and_location_is_written_literally() -> None:
    """grep finds every declared name: no computed keys or locations in the declaration."""
    path = ROOT / "mipruner_vllm/integration/vllm_surface/declaration.py"
    calls = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_n"
    ]
    assert len(calls) == len(SURFACE)
    for call in calls:
        for arg in call.args:
            literal = arg.elts if isinstance(arg, ast.Tuple) else [arg]
            assert all(isinstance(x, ast.Constant) for x in literal), ast.unparse(call)[:80]
        text = path.read_text()
        assert f'"{call.args[0].value}"' in text


def test_docs_carry_the_declaration_table() -> None:
    text = (ROOT / "docs" / "vllm-support.md").read_text()
    start, end = "<!-- surface-table:start -->\n", "<!-- surface-table:end -->"
    assert start in text and end in text
    rendered = text.split(start, 1)[1].split(end, 1)[0]
    assert rendered == vllm_surface.markdown_table(), (
        "docs/vllm-support.md is stale: paste vllm_surface.markdown_table() between the markers"
    )


# --- the family registry ----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES.values(), ids=list(FAMILIES))
def test_every_family_is_declared_and_defined(family) -> None:
    """Each family's stock classes are in the declaration and its module defines its class."""
    assert SURFACE_BY_KEY[family.architecture].use == "subclass"
    module_path = ROOT / "mipruner_vllm/integration/models" / f"{family.module}.py"
    classes = {
        n.name for n in ast.parse(module_path.read_text()).body if isinstance(n, ast.ClassDef)
    }
    assert family.pruning_architecture in classes


def test_demo_checkpoints_cover_exactly_the_families() -> None:
    from mipruner_vllm.demo_model.families import FAMILIES as DEMO

    assert list(DEMO) == list(FAMILIES)


def _vllm_imports(path: Path) -> list[str]:
    locations = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
            locations += [f"{node.module}:{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            locations += [alias.name for alias in node.names if alias.name.split(".")[0] == "vllm"]
    return locations


def _string_calls(path: Path, function: str) -> list[str]:
    keys = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == function
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            keys.append(node.args[0].value)
    return keys


def test_every_vllm_import_in_the_project_is_declared() -> None:
    declared = {location for n in SURFACE for location in n.locations}
    undeclared = {
        f"{path.relative_to(ROOT)}: {location}"
        for path in PROJECT_SOURCES
        for location in _vllm_imports(path)
        # `import vllm` only reads vllm.__version__ (the version check, the smoke check).
        if location != "vllm" and location not in declared
    }
    assert not undeclared, (
        "declare these in mipruner_vllm/integration/vllm_surface/declaration.py: "
        + ", ".join(sorted(undeclared))
    )


def test_every_resolved_or_patched_key_is_declared() -> None:
    for path in PROJECT_SOURCES:
        for key in _string_calls(path, "resolve"):
            assert key in SURFACE_BY_KEY, f"{path.relative_to(ROOT)} resolves undeclared {key!r}"
        for key in _string_calls(path, "apply_patch"):
            assert SURFACE_BY_KEY[key].use == "patch", f"{path.relative_to(ROOT)} patches {key!r}"


def test_declaration_is_well_formed() -> None:
    assert len(SURFACE_BY_KEY) == len(SURFACE), "duplicate keys"
    for declared in SURFACE:
        assert declared.why and declared.locations
        assert all(loc.startswith("vllm") and ":" in loc for loc in declared.locations), (
            declared.key
        )
        if declared.use == "override":
            assert declared.params is not None, f"{declared.key}: overrides pin their parameters"


def test_patches_are_logged_idempotent_and_undoable(caplog: pytest.LogCaptureFixture) -> None:
    class Renderer:
        def _process_multimodal_async(self) -> str:
            return "stock"

    renderer = Renderer()
    original = renderer._process_multimodal_async
    with caplog.at_level("INFO", logger=vllm_surface.__name__):
        first = vllm_surface.apply_patch(
            "BaseRenderer._process_multimodal_async", renderer, lambda: "ours"
        )
        again = vllm_surface.apply_patch(
            "BaseRenderer._process_multimodal_async", renderer, lambda: "other"
        )
    assert again is first and renderer._process_multimodal_async() == "ours"
    assert (
        sum("replaced BaseRenderer._process_multimodal_async" in r.message for r in caplog.records)
        == 1
    )
    first.undo()
    assert renderer._process_multimodal_async == original
    with pytest.raises(ValueError, match="not declared as a patch"):
        vllm_surface.apply_patch("ModelRegistry", renderer, None)
