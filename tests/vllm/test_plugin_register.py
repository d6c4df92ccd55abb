# SPDX-License-Identifier: Apache-2.0
"""The entry point and the launch helpers, without an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mipruner_vllm.errors import UnsupportedVllmError
from mipruner_vllm.integration import compat
from mipruner_vllm.integration.launch import (
    CPU_WORKER_CLS,
    MODEL_CLASSES,
    PRUNING_ARCHITECTURES,
    engine_overrides,
    pruning_architectures,
    server_cli_args,
)

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


def test_version_check_names_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compat.supported_vllm_range() == ">=0.32.0,<0.33" or "0.32" in compat.supported_vllm_range()
    monkeypatch.setattr(compat, "installed_vllm_version", lambda: "0.40.1")
    with pytest.raises(UnsupportedVllmError, match=r"vllm==0\.40\.1") as err:
        compat.check_vllm_version()
    assert compat.supported_vllm_range() in str(err.value)
    assert compat.check_vllm_version(skip=True) == "0.40.1"
    assert compat.is_supported("0.32.0+cpu", ">=0.32.0,<0.33")
    assert not compat.is_supported("0.31.9", ">=0.32.0,<0.33")


def test_launch_helpers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    assert engine_overrides(tmp_path, "cpu") == {
        "hf_overrides": {"architectures": ["MIPrunerQwen2_5_VLForConditionalGeneration"]},
        "worker_cls": CPU_WORKER_CLS,
    }
    gpu = engine_overrides(tmp_path, "cuda")
    assert "worker_cls" not in gpu and 0 < gpu["video_pruning_rate"] < 1
    assert engine_overrides("LlavaForConditionalGeneration", "cpu") == {
        "hf_overrides": {"architectures": ["MIPrunerLlavaForConditionalGeneration"]}
    }
    args = server_cli_args(tmp_path, "cpu")
    assert args[:3] == ["--hf-overrides", '{"architectures": ["MIPrunerQwen2_5_VLForConditionalGeneration"]}', "--trust-request-mm-kwargs"]
    assert args[3:] == ["--worker-cls", CPU_WORKER_CLS]
    assert pruning_architectures(["MIPrunerLlavaForConditionalGeneration"]) == ["MIPrunerLlavaForConditionalGeneration"]
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
    assert mro.index(MIPrunerQwen3VLForConditionalGeneration) < mro.index(getattr(stock_module, stock))
    assert is_hybrid(cls) and supports_mrope(cls) and supports_multimodal_pruning(cls)
    assert name in ModelRegistry.get_supported_archs()
    assert hasattr(cls, "set_moe_parameters") == moe
    # Its own processor registration, with Qwen3.5's processing info.
    assert "_processor_factory" in cls.__dict__
    assert "Qwen3_5" in cls._processor_factory.info.__name__
