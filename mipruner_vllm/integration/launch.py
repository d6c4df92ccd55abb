# SPDX-License-Identifier: Apache-2.0
"""Arming: everything vLLM needs to run a model with MI-Pruner, in one module.

Launchers (the project's server, benchmarks, tests, a user's ``LLM(...)``) call
:func:`engine_overrides` / :func:`server_cli_args`; the models call :func:`check_armed` and
:func:`disable_stock_video_pruning` when they are built; vLLM's CPU platform loads
:class:`MIPrunerCPUWorker` by name. Importing this module imports neither vLLM nor torch (the
worker class is created on first access), so it is safe in a process that has not decided to
start an engine yet.

Three things arm the plugin (see ``docs/plugin.md``):

1. ``hf_overrides={"architectures": ["MIPruner<Arch>"]}`` selects the pruning-aware model and
   processor that :func:`mipruner_vllm.plugin.register` registered under their own names. Stock
   architectures are never replaced, so an engine without the override is stock vLLM.
2. ``--trust-request-mm-kwargs`` (server only): vLLM rejects per-request ``mm_processor_kwargs``
   without it. Offline ``LLM.generate/chat`` has no such gate.
3. For the M-RoPE models (Qwen family) the runner must call the model's
   ``recompute_mrope_positions``. Every V2 runner (the GPU default; from vLLM 0.34 the only
   runner, on CPU too) and the V1 GPU runner arm that when ``video_pruning_rate > 0``, so we
   pass a positive rate; the V1 CPU runner of vLLM <= 0.33 never arms it, so there the plugin
   ships a worker class that does (``worker_cls``, vLLM's own knob). :func:`arming` picks one
   from what the installed vLLM offers. The MIPruner models switch vLLM's own video pruning
   (EVS) off (:func:`disable_stock_video_pruning`), so the rate only arms the runner and a video
   is never pruned twice.

A mis-launched engine fails at start-up (:func:`check_armed`, from the model's constructor)
with the flags to add, not on the first pruned request.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from mipruner_vllm.errors import MiprunerError
from mipruner_vllm.families import FAMILIES

logger = logging.getLogger(__name__)

#: Stock vLLM architecture name -> the pruning-aware name the plugin registers.
PRUNING_ARCHITECTURES: dict[str, str] = {
    family.architecture: family.pruning_architecture for family in FAMILIES.values()
}

#: Pruning-aware name -> lazy ``module:Class`` reference for ``ModelRegistry.register_model``.
MODEL_CLASSES: dict[str, str] = {
    family.pruning_architecture: family.model_class for family in FAMILIES.values()
}

#: Pruning-aware architectures that use M-RoPE and so need the runner's position recompute.
MROPE_ARCHITECTURES: frozenset[str] = frozenset(
    family.pruning_architecture for family in FAMILIES.values() if family.mrope
)

#: The CPU worker that arms ``recompute_mrope_positions`` on the V1 CPU runner (vLLM <= 0.33),
#: which never does it itself.
CPU_WORKER_CLS = "mipruner_vllm.integration.launch.MIPrunerCPUWorker"

#: Any value in (0, 1) arms every V2 runner (GPU, and 0.34's CPU runner) and the V1 GPU runner
#: for position recompute. The MIPruner models never apply vLLM's own video pruning (EVS), so
#: the value has no other effect.
GPU_ARMING_VIDEO_PRUNING_RATE = 0.5

Device = Literal["cpu", "cuda"]

#: How the runner is armed: the plugin's worker class (V1 CPU runner) or vLLM's own flag.
Arming = Literal["worker_cls", "video_pruning_rate"]


def _architectures(model: str | Path | Sequence[str]) -> list[str]:
    if isinstance(model, (str, Path)) and Path(model, "config.json").is_file():
        config = json.loads(Path(model, "config.json").read_text())
        return list(config.get("architectures") or [])
    if isinstance(model, (str, Path)):
        return [str(model)]
    return list(model)


def pruning_architectures(model: str | Path | Sequence[str]) -> list[str]:
    """The ``architectures`` override for a checkpoint dir, an arch name or a list of names.

    Raises ``ValueError`` naming the supported architectures when none of them is supported.
    Names that are already pruning-aware pass through unchanged.
    """
    archs = _architectures(model)
    out = [
        PRUNING_ARCHITECTURES.get(a, a)
        for a in archs
        if a in PRUNING_ARCHITECTURES or a in MODEL_CLASSES
    ]
    if not out:
        raise ValueError(
            f"no MI-Pruner support for architectures {archs}; supported: "
            + ", ".join(PRUNING_ARCHITECTURES)
        )
    return out


def platform_device() -> Device:
    """Where vLLM's engine will run on this machine: ``"cpu"`` or ``"cuda"`` (vLLM's platform)."""
    from mipruner_vllm.integration.vllm_surface import resolve

    return "cpu" if resolve("current_platform").is_cpu() else "cuda"


def engine_overrides(
    model: str | Path | Sequence[str], device: Device | None = None
) -> dict[str, Any]:
    """``EngineArgs`` / ``LLM(...)`` keyword arguments that enable MI-Pruner for ``model``.

    ``model`` is a checkpoint directory (its ``config.json`` names the architecture) or the
    architecture name(s). ``device`` is where the engine runs, by default what vLLM's platform
    says: ``"cpu"`` adds the arming worker class, ``"cuda"`` a positive ``video_pruning_rate``
    (M-RoPE models only).
    """
    archs = pruning_architectures(model)
    kwargs: dict[str, Any] = {"hf_overrides": {"architectures": archs}}
    if any(a in MROPE_ARCHITECTURES for a in archs):
        if arming(device or platform_device()) == "worker_cls":
            kwargs["worker_cls"] = CPU_WORKER_CLS
        else:
            kwargs["video_pruning_rate"] = GPU_ARMING_VIDEO_PRUNING_RATE
    return kwargs


def arming(device: Device) -> Arming:
    """How an engine on ``device`` is armed, from what the installed vLLM offers.

    Up to vLLM 0.33 the CPU platform builds the V1 CPU runner, which never arms the recompute:
    the plugin's worker class does. Every other runner (V1 and V2 on GPU; 0.34's CPU runner,
    a V2 runner) arms it when ``video_pruning_rate > 0``. On GPU this needs no vLLM import.
    """
    if device == "cpu":
        from mipruner_vllm.integration.vllm_surface import needed

        if needed("CPUWorker"):
            return "worker_cls"
    return "video_pruning_rate"


def uses_v1_runner(vllm_config: Any) -> bool:
    """Whether the engine builds a V1 model runner (vLLM <= 0.33 with V2 off; 0.34 has no V1)."""
    from mipruner_vllm.integration.vllm_surface import needed

    return needed("VllmConfig.use_v2_model_runner") and not vllm_config.use_v2_model_runner


def server_cli_args(model: str | Path | Sequence[str], device: Device | None = None) -> list[str]:
    """The same as :func:`engine_overrides`, as flags for ``vllm.entrypoints.openai.api_server``.

    Includes ``--trust-request-mm-kwargs`` so clients can send per-request pruning parameters in
    ``mm_processor_kwargs`` (the plugin validates and allow-lists them in the processor).
    """
    kwargs = engine_overrides(model, device)
    args = ["--hf-overrides", json.dumps(kwargs["hf_overrides"]), "--trust-request-mm-kwargs"]
    if "worker_cls" in kwargs:
        args += ["--worker-cls", kwargs["worker_cls"]]
    if "video_pruning_rate" in kwargs:
        args += ["--video-pruning-rate", str(kwargs["video_pruning_rate"])]
    return args


class LaunchConfigurationError(MiprunerError, RuntimeError):
    """The engine was launched without what a pruning-aware M-RoPE model needs."""


def check_armed(vllm_config: Any, arch: str) -> bool:
    """Whether the runner will call ``recompute_mrope_positions``; raises with the fix if not.

    Called from the M-RoPE models' constructors, when the runner kind is known: vLLM's GPU
    runners (V1 and V2) and every V2 CPU runner arm the recompute when
    ``video_pruning_rate > 0``; the V1 CPU runner (vLLM <= 0.33) never does, which
    :class:`MIPrunerCPUWorker` fixes.
    """
    from mipruner_vllm.integration.vllm_surface import resolve

    if resolve("current_platform").is_cpu() and uses_v1_runner(vllm_config):
        worker = vllm_config.parallel_config.worker_cls
        if isinstance(worker, str):
            worker = resolve("resolve_obj_by_qualname")(worker)
        if isinstance(worker, type) and issubclass(worker, _cpu_worker_class()):
            return True
        raise LaunchConfigurationError(
            f"{arch} on vLLM's V1 CPU runner needs the plugin's worker class to keep M-RoPE "
            f"positions of pruned tokens: pass worker_cls={CPU_WORKER_CLS!r} "
            f"(CLI: --worker-cls {CPU_WORKER_CLS}); "
            "see mipruner_vllm.integration.launch.engine_overrides()"
        )
    if vllm_config.model_config.get_multimodal_config().is_multimodal_pruning_enabled():
        return True
    raise LaunchConfigurationError(
        f"{arch} needs vLLM's M-RoPE recompute armed: pass video_pruning_rate="
        f"{GPU_ARMING_VIDEO_PRUNING_RATE} "
        f"(CLI: --video-pruning-rate {GPU_ARMING_VIDEO_PRUNING_RATE}); "
        "the value only arms the runner, MI-Pruner replaces vLLM's own video pruning; see "
        "mipruner_vllm.integration.launch.engine_overrides()"
    )


def disable_stock_video_pruning(model: Any) -> None:
    """Switch the stock model's EVS off: our arming rate would otherwise prune videos twice.

    Stock Qwen2/2.5/3-VL run EVS on videos when ``video_pruning_rate > 0``, which is exactly
    how every runner but the V1 CPU one is armed; the MIPruner models select every item
    themselves.
    """
    model.is_multimodal_pruning_enabled = False


def arm_position_recompute(model_runner: Any) -> bool:
    """Set the V1 runner's pruning flag for an MI-Pruner M-RoPE model; True if armed."""
    from mipruner_vllm.integration.vllm_surface import resolve

    model = model_runner.get_model()
    if (
        getattr(model, "mipruner_positions_armed", False)
        and resolve("supports_multimodal_pruning")(model)
        and model_runner.uses_mrope
    ):
        model_runner.is_multimodal_pruning_enabled = True
        logger.info("mipruner: M-RoPE position recompute armed on the CPU model runner")
        return True
    return False


@functools.cache
def _cpu_worker_class() -> type:
    """vLLM's CPU worker, arming the V1 runner's position recompute once the model is loaded.

    Why a worker class: vLLM's V1 GPU model runner sets ``is_multimodal_pruning_enabled`` in
    ``load_model``; the V1 CPU runner (vLLM <= 0.33) overrides ``load_model`` and never does, so
    pruned M-RoPE items would keep wrong positions. ``--worker-cls`` is vLLM's supported knob for
    this (the CPU platform only fills it when it is ``"auto"``), so no vLLM code is patched.
    Built on first access so that importing this module does not import vLLM.
    """
    from mipruner_vllm.integration.vllm_surface import resolve

    base = resolve("CPUWorker")

    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        base.load_model(self, *args, **kwargs)
        # A V2 runner (VLLM_USE_V2_MODEL_RUNNER=1) arms itself from video_pruning_rate, which
        # check_armed() has already required; its runner has no V1 flag to set.
        if uses_v1_runner(self.vllm_config):
            arm_position_recompute(self.model_runner)

    return type("MIPrunerCPUWorker", (base,), {"load_model": load_model, "__module__": __name__})


def __getattr__(name: str) -> Any:
    # PEP 562: vLLM resolves CPU_WORKER_CLS with import_module + getattr, which lands here.
    if name == "MIPrunerCPUWorker":
        return _cpu_worker_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
