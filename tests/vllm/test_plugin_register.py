# SPDX-License-Identifier: Apache-2.0
"""The entry point and the launch helpers, without an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mipruner_vllm.integration import vllm_surface
from mipruner_vllm.integration.launch import (
    CPU_WORKER_CLS,
    MODEL_CLASSES,
    PRUNING_ARCHITECTURES,
    engine_overrides,
    pruning_architectures,
    server_cli_args,
)
from mipruner_vllm.integration.vllm_surface import releases

pytestmark = [pytest.mark.vllm]


def test_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "mipruner"]
    assert ep.value == "mipruner_vllm.plugin:register"


def test_register_is_idempotent_and_registers_every_architecture() -> None:
    pytest.importorskip("vllm")
    from vllm import ModelRegistry

    from mipruner_vllm.plugin import register

    register()
    register()
    assert set(MODEL_CLASSES) <= set(ModelRegistry.get_supported_archs())
    assert set(PRUNING_ARCHITECTURES.values()) == set(MODEL_CLASSES)


def test_declared_surface_matches_the_installed_vllm() -> None:
    pytest.importorskip("vllm")
    assert vllm_surface.check(vllm_surface.VllmSource.installed()) == []
    assert vllm_surface.check_installed() == vllm_surface.installed_vllm_version()


def _inspect_params(signature) -> tuple[str, ...]:
    """A signature in the surface's notation: ``/`` and ``*`` markers, ``*args``, ``**kwargs``."""
    import inspect

    kinds = inspect.Parameter
    out: list[str] = []
    values = list(signature.parameters.values())
    for i, p in enumerate(values):
        if p.kind is kinds.KEYWORD_ONLY and not any(x.startswith("*") for x in out):
            out.append("*")
        out.append({kinds.VAR_POSITIONAL: "*", kinds.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name)
        if p.kind is kinds.POSITIONAL_ONLY and (
            i + 1 == len(values) or values[i + 1].kind is not kinds.POSITIONAL_ONLY
        ):
            out.append("/")
    return tuple(out)


def test_declared_parameters_agree_with_inspect() -> None:
    """The source reader's parameter lists are what ``inspect`` sees on the imported class."""
    pytest.importorskip("vllm")
    import importlib
    import inspect

    version = vllm_surface.installed_vllm_version()
    for declared in vllm_surface.SURFACE:
        locations = releases.locations_on(declared, version)
        if declared.params is None or len(locations) != 1:
            continue
        if not releases.needed_on(declared, version):
            continue
        module, _, qualname = locations[0].partition(":")
        owner_name, _, attribute = qualname.rpartition(".")
        owner = importlib.import_module(module)
        for part in owner_name.split("."):
            owner = getattr(owner, part)
        function = inspect.getattr_static(owner, attribute)
        function = getattr(function, "__func__", function)  # staticmethod / classmethod
        params = _inspect_params(inspect.signature(function))
        if declared.params_prefix:
            params = params[: len(declared.params)]
        assert tuple(params) == declared.params, declared.key


def test_cpu_worker_class_resolves_by_name_and_arms() -> None:
    pytest.importorskip("vllm")
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.worker.cpu_worker import CPUWorker

    worker = resolve_obj_by_qualname(CPU_WORKER_CLS)
    assert issubclass(worker, CPUWorker) and worker.__name__ == "MIPrunerCPUWorker"
    assert resolve_obj_by_qualname(CPU_WORKER_CLS) is worker  # one class per process


def test_launch_helpers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]})
    )
    assert engine_overrides(tmp_path, "cpu") == {
        "hf_overrides": {"architectures": ["MIPrunerQwen2_5_VLForConditionalGeneration"]},
        "worker_cls": CPU_WORKER_CLS,
    }
    gpu = engine_overrides(tmp_path, "cuda")
    assert "worker_cls" not in gpu and 0 < gpu["video_pruning_rate"] < 1
    assert engine_overrides("LlavaForConditionalGeneration", "cpu") == {
        "hf_overrides": {"architectures": ["MIPrunerLlavaForConditionalGeneration"]}
    }
    # No device given: vLLM's platform decides (this machine is a CPU one).
    assert engine_overrides(tmp_path) == engine_overrides(tmp_path, "cpu")
    args = server_cli_args(tmp_path, "cpu")
    assert args[:3] == [
        "--hf-overrides",
        '{"architectures": ["MIPrunerQwen2_5_VLForConditionalGeneration"]}',
        "--trust-request-mm-kwargs",
    ]
    assert args[3:] == ["--worker-cls", CPU_WORKER_CLS]
    assert pruning_architectures(["MIPrunerLlavaForConditionalGeneration"]) == [
        "MIPrunerLlavaForConditionalGeneration"
    ]
    with pytest.raises(ValueError, match="supported"):
        pruning_architectures(["GPT2LMHeadModel"])


@pytest.mark.parametrize(
    ("stock", "moe"),
    [("Qwen3_5ForConditionalGeneration", False), ("Qwen3_5MoeForConditionalGeneration", True)],
)
def test_qwen3_5_classes_keep_the_hybrid_model_interfaces(stock: str, moe: bool) -> None:
    """The pruning-aware Qwen3.5 classes are vLLM's Qwen3.5 models with the Qwen3-VL glue in
    front: still hybrid (vLLM sizes the recurrent-state cache from them), MoE where stock is."""
    pytest.importorskip("vllm")
    from vllm import ModelRegistry
    from vllm.model_executor.models import qwen3_5 as stock_module
    from vllm.model_executor.models.interfaces import (
        is_hybrid,
        supports_mrope,
        supports_multimodal_pruning,
    )
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from mipruner_vllm.integration.models.qwen3_vl import MIPrunerQwen3VLForConditionalGeneration
    from mipruner_vllm.plugin import register

    register()
    name = PRUNING_ARCHITECTURES[stock]
    cls = resolve_obj_by_qualname(MODEL_CLASSES[name].replace(":", "."))
    mro = cls.__mro__
    assert mro.index(MIPrunerQwen3VLForConditionalGeneration) < mro.index(
        getattr(stock_module, stock)
    )
    assert is_hybrid(cls) and supports_mrope(cls) and supports_multimodal_pruning(cls)
    assert name in ModelRegistry.get_supported_archs()
    assert hasattr(cls, "set_moe_parameters") == moe
    # Its own processor registration, with Qwen3.5's processing info.
    assert "_processor_factory" in cls.__dict__
    assert "Qwen3_5" in cls._processor_factory.info.__name__
