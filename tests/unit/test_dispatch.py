# SPDX-License-Identifier: Apache-2.0
"""The one selection dispatcher (mipruner_vllm.pruning.dispatch) and the layering around it.

* the kernels are pure ops: nothing under ``kernels/`` imports the pruning core, the settings,
  the request parameters or vLLM, and the pruning core imports no vLLM, server or metrics code;
* the modules of both packages form no import cycle (function-level imports included) and each
  imports on its own in a fresh interpreter;
* the dispatcher reports what produced each item, and the warm-up says when it has nothing to do.

The Triton path itself (labels ``triton`` and per-item fallbacks) is checked under the
interpreter in ``tests/kernel/test_mi_select.py`` and on CUDA in ``tests/kernel/test_gpu.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mipruner_vllm import resolve_params
from mipruner_vllm.errors import KernelUnavailableError
from mipruner_vllm.pruning import dispatch as dispatch_module
from mipruner_vllm.pruning import reference
from mipruner_vllm.pruning.dispatch import Selection, dispatch, warmup
from mipruner_vllm.pruning.select import select_batch, select_tokens_batch

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> the package it is installed as (pyproject's package-dir).
PACKAGES = {
    ROOT / "mipruner_vllm" / "pruning": "mipruner_vllm.pruning",
    ROOT / "kernels": "mipruner_vllm.kernels",
}


def _module_name(path: Path, package: str) -> str:
    return package if path.name == "__init__.py" else f"{package}.{path.stem}"


def _imports(path: Path, package: str) -> list[tuple[str, list[str]]]:
    """Every import in ``path`` at any depth (lazy imports count too): ``(module, names)``."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            if node.level:
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
    return found


def _all_imports() -> dict[str, set[str]]:
    """Module -> every module it imports; ``from pkg import mod`` counts as importing ``mod``
    (and not ``pkg``, whose ``__init__`` runs first in any case) when ``mod`` is a module here."""
    files = {
        _module_name(path, package): (path, package)
        for folder, package in PACKAGES.items()
        for path in folder.glob("*.py")
    }
    out: dict[str, set[str]] = {}
    for name, (path, package) in files.items():
        deps: set[str] = set()
        for module, names in _imports(path, package):
            submodules = {f"{module}.{n}" for n in names} & files.keys()
            deps |= submodules if submodules and len(submodules) == len(names) else {module}
        out[name] = deps
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of both packages it imports."""
    imports = _all_imports()
    return {name: {m for m in deps if m in imports and m != name} for name, deps in imports.items()}


def test_the_graph_sees_both_packages():
    graph = _graph()
    for name in ("mipruner_vllm.pruning.dispatch", "mipruner_vllm.pruning.select",
                 "mipruner_vllm.kernels.launch", "mipruner_vllm.kernels.mi_select"):  # fmt: skip
        assert name in graph
    assert "mipruner_vllm.kernels.launch" in graph["mipruner_vllm.pruning.dispatch"]
    assert "mipruner_vllm.pruning.dispatch" in graph["mipruner_vllm.pruning.select"]


def test_no_import_cycles_between_pruning_and_kernels():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_kernels_are_pure_ops():
    """kernels/ knows tensors and numbers only: no pruning core, settings, parameters or vLLM."""
    for module, imports in _all_imports().items():
        if not module.startswith("mipruner_vllm.kernels"):
            continue
        ours = {m for m in imports if m.startswith("mipruner_vllm")}
        outside = {m for m in ours if not m.startswith("mipruner_vllm.kernels")}
        assert not outside, f"{module} imports {sorted(outside)}"
        assert not {m for m in imports if m.split(".")[0] == "vllm"}, module


def test_pruning_core_imports_no_vllm_server_or_metrics():
    banned = ("vllm", "mipruner_vllm.integration", "mipruner_vllm.server", "mipruner_vllm.metrics")
    for module, imports in _all_imports().items():
        if module.startswith("mipruner_vllm.pruning"):
            bad = {m for m in imports if any(m == b or m.startswith(b + ".") for b in banned)}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_each_module_imports_on_its_own():
    """A fresh interpreter per module, first import wins: an import-order cycle would fail here."""
    names = sorted(_graph())
    code = (
        "import importlib, sys\n"
        "import torch  # noqa: F401 - loaded once; our modules are what is imported fresh\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('mipruner_vllm')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- what ran ---------------------------------------------------------------------------------


def _items():
    g = torch.Generator().manual_seed(0)
    visuals = [torch.randn(n, 16, generator=g) for n in (30, 12, 9, 20)]
    texts = [torch.randn(n, 16, generator=g) for n in (3, 0, 2, 4)]
    params = [
        resolve_params(keep_ratio=0.5),  # scored
        resolve_params(keep_ratio=0.5),  # no query text: uniform stride
        resolve_params(keep_ratio=1.0),  # keeps everything
        resolve_params(keep_ratio=0.25, method="divprune"),  # scored, text-agnostic
    ]
    return visuals, texts, params


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cpu_items_report_torch_or_none(backend):
    visuals, texts, params = _items()
    selection = select_batch(visuals, texts, params, backend=backend)
    assert selection.backends == ["torch", "none", "none", "torch"]
    assert selection.label == "torch"
    for v, t, p, got in zip(visuals, texts, params, selection.indices, strict=True):
        assert torch.equal(got, dispatch_module.select_reference(v, t, p))
    assert torch.equal(selection.indices[1], reference.uniform_stride(12, 6))
    # select_tokens_batch is the same selection without the report.
    for a, b in zip(select_tokens_batch(visuals, texts, params, backend=backend),
                    selection.indices, strict=True):  # fmt: skip
        assert torch.equal(a, b)


def test_items_without_scores_are_none_on_both_paths(monkeypatch):
    """No query text under a text-conditioned method without a kernel: ``none``, not a fallback."""
    g = torch.Generator().manual_seed(1)
    visuals = [torch.randn(20, 16, generator=g) for _ in range(2)]
    texts = [torch.zeros(0, 16), torch.zeros(0, 16)]
    params = [resolve_params(keep_ratio=0.5, method="similarity"),
              resolve_params(keep_ratio=0.5, method="trimtokenator")]  # fmt: skip
    assert dispatch(visuals, texts, params, "torch").backends == ["none", "none"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton path, on CPU; no kernel is needed
    selection = dispatch(visuals, texts, params, "triton")
    assert selection.backends == ["none", "none"]
    for got in selection.indices:
        assert torch.equal(got, reference.uniform_stride(20, 10))


def test_batch_label():
    assert Selection([], ["triton", "none", "triton"]).label == "triton"
    assert Selection([], ["torch", "triton"]).label == "mixed"
    assert Selection([], ["none", "none"]).label == "none"
    assert Selection([], []).label == "none"


def test_empty_batch():
    assert dispatch([], [], [], "auto") == Selection([], [])


def test_forced_triton_on_cpu_without_interpreter_names_the_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    visuals, texts, params = _items()
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET"):
        dispatch(visuals, texts, params, "triton")


def test_the_worker_metrics_take_the_dispatchers_report():
    from mipruner_vllm.metrics import (
        BACKEND_INFO,
        SELECTED_ITEMS,
        SELECTION_SECONDS,
        observe_selection,
    )

    def value(metric, name, **labels):
        samples = [s for s in metric.collect()[0].samples if s.name == name and s.labels == labels]
        return samples[0].value if samples else 0.0

    before_none = value(SELECTED_ITEMS, "mipruner_selected_items_total", backend="none")
    before_mixed = value(SELECTION_SECONDS, "mipruner_selection_seconds_count", backend="mixed")
    observe_selection(0.01, "mixed", ["triton", "torch", "none", "none"])
    assert value(SELECTED_ITEMS, "mipruner_selected_items_total", backend="none") == before_none + 2
    assert value(SELECTION_SECONDS, "mipruner_selection_seconds_count", backend="mixed") == (
        before_mixed + 1
    )
    assert value(BACKEND_INFO, "mipruner_backend_info", backend="triton") == 1.0
    assert value(BACKEND_INFO, "mipruner_backend_info", backend="none") == 0.0


# --- warm-up ----------------------------------------------------------------------------------


def test_warmup_on_cpu_is_a_no_op_that_says_so(caplog):
    caplog.set_level("INFO", logger="mipruner_vllm.pruning.dispatch")
    report = warmup("cpu", torch.bfloat16, 64)
    assert not report.ran and "cpu device" in report.reason
    assert "warm-up skipped" in caplog.text
    assert not warmup("cuda", torch.bfloat16, 64, backend="torch").ran


def test_warmup_query_lengths_come_from_the_kernels_tile_rule():
    """Each tile's shortest query picks that tile, one token less picks a smaller one."""
    from mipruner_vllm.kernels.mi_select import (
        TEXT_BLOCKS,
        shortest_query_per_text_block,
        text_block,
    )

    shortest = shortest_query_per_text_block()
    assert sorted(shortest) == sorted(TEXT_BLOCKS)
    for block, n_text in shortest.items():
        assert text_block(n_text) == block
        assert n_text == 1 or text_block(n_text - 1) < block
    assert text_block(10 * TEXT_BLOCKS[-1]) == TEXT_BLOCKS[-1]  # long queries loop over tiles


def test_the_kernel_registry_lists_every_triton_kernel():
    """``launch.KERNELS`` (what the warm-up counts and the AOT check builds) misses no kernel."""
    from mipruner_vllm.kernels.launch import KERNELS

    jitted = set()
    for path in (ROOT / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel"):
                if any(ast.unparse(d) == "triton.jit" for d in node.decorator_list):
                    jitted.add(node.name)
    assert jitted and {fn.fn.__name__ for fn in KERNELS.values()} == jitted
