# SPDX-License-Identifier: Apache-2.0
"""Which arming each vLLM release and runner gets, and the start-up check that refuses an
un-armed engine, on made-up configs (no vLLM needed: the installed release is faked)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from mipruner_vllm.integration import launch
from mipruner_vllm.integration import vllm_surface as surface
from mipruner_vllm.integration.vllm_surface import releases

pytestmark = pytest.mark.unit


@pytest.fixture
def vllm_release(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set the release the launcher believes is installed."""

    def use(version: str) -> None:
        releases._installed_version.cache_clear()
        monkeypatch.setattr(releases, "installed_vllm_version", lambda: version)

    yield use
    releases._installed_version.cache_clear()


class _CPUWorker:
    pass


class _ArmingWorker(_CPUWorker):
    pass


def _platform(monkeypatch: pytest.MonkeyPatch, *, cpu: bool) -> None:
    names = {
        "current_platform": SimpleNamespace(is_cpu=lambda: cpu),
        "resolve_obj_by_qualname": lambda name: {"arming": _ArmingWorker}.get(name, _CPUWorker),
    }
    monkeypatch.setattr(surface, "resolve", names.__getitem__)
    monkeypatch.setattr(launch, "_cpu_worker_class", lambda: _ArmingWorker)


def _config(*, rate: bool, worker: str = "auto", v2: bool | None = None) -> Any:
    multimodal = SimpleNamespace(is_multimodal_pruning_enabled=lambda: rate)
    return SimpleNamespace(
        parallel_config=SimpleNamespace(worker_cls=worker),
        model_config=SimpleNamespace(get_multimodal_config=lambda: multimodal),
        # vLLM 0.34's VllmConfig has no use_v2_model_runner: V2 is the only runner.
        **({} if v2 is None else {"use_v2_model_runner": v2}),
    )


@pytest.mark.parametrize(
    ("version", "device", "expected"),
    [
        ("0.32.0+cpu", "cpu", "worker_cls"),  # the V1 CPU runner never arms itself
        ("0.33.0", "cpu", "worker_cls"),
        ("0.34.0", "cpu", "video_pruning_rate"),  # 0.34's CPU runner is a V2 runner
        ("0.32.0", "cuda", "video_pruning_rate"),
        ("0.34.0", "cuda", "video_pruning_rate"),
    ],
)
def test_arming_follows_what_the_release_offers(
    vllm_release: Any, version: str, device: launch.Device, expected: str
) -> None:
    vllm_release(version)
    assert launch.arming(device) == expected
    kwargs = launch.engine_overrides("Qwen2_5_VLForConditionalGeneration", device)
    assert expected in kwargs and ({"worker_cls", "video_pruning_rate"} - {expected}).isdisjoint(
        kwargs
    )
    # Models without M-RoPE need no arming at all.
    assert set(launch.engine_overrides("LlavaForConditionalGeneration", device)) == {"hf_overrides"}


@pytest.mark.parametrize(
    ("version", "cpu", "config", "fix"),
    [
        # V1 CPU runner (<= 0.33): only the worker class arms it, the rate does not.
        ("0.33.0", True, _config(rate=True, v2=False), "--worker-cls"),
        ("0.32.0+cpu", True, _config(rate=False, worker="arming", v2=False), None),
        # V2 CPU runner on 0.32/0.33 and 0.34's CPU runner: the rate arms them.
        ("0.33.0", True, _config(rate=False, worker="arming", v2=True), "--video-pruning-rate"),
        ("0.33.0", True, _config(rate=True, v2=True), None),
        ("0.34.0", True, _config(rate=False), "--video-pruning-rate"),
        ("0.34.0", True, _config(rate=True), None),
        # GPU, every release.
        ("0.32.0", False, _config(rate=False, v2=True), "--video-pruning-rate"),
        ("0.34.0", False, _config(rate=True), None),
    ],
)
def test_start_up_check_refuses_an_unarmed_runner(
    monkeypatch: pytest.MonkeyPatch,
    vllm_release: Any,
    version: str,
    cpu: bool,
    config: Any,
    fix: str | None,
) -> None:
    vllm_release(version)
    _platform(monkeypatch, cpu=cpu)
    if fix is None:
        assert launch.check_armed(config, "MIPrunerQwen2_5_VLForConditionalGeneration")
    else:
        with pytest.raises(launch.LaunchConfigurationError, match=fix):
            launch.check_armed(config, "MIPrunerQwen2_5_VLForConditionalGeneration")


def test_launch_tables_derive_from_the_family_registry() -> None:
    from mipruner_vllm.families import FAMILIES

    assert len(launch.MODEL_CLASSES) == len(FAMILIES) == len(launch.PRUNING_ARCHITECTURES)
    assert launch.MROPE_ARCHITECTURES == {
        f.pruning_architecture for f in FAMILIES.values() if f.mrope
    }
    assert launch.MODEL_CLASSES["MIPrunerQwen3_5MoeForConditionalGeneration"] == (
        "mipruner_vllm.integration.models.qwen3_5:MIPrunerQwen3_5MoeForConditionalGeneration"
    )
