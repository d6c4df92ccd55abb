# SPDX-License-Identifier: Apache-2.0
"""What vLLM needs to run a model with MI-Pruner: architecture names and launch flags.

This module is what launchers (the project's server, benchmarks, tests) call. It imports neither
vLLM nor torch at import time, so it is safe in a process that has not decided to start an engine
yet; only :func:`platform_device` (the launch helpers' default device) asks vLLM's platform.

Three things arm the plugin (see ``docs/plugin.md``):

1. ``hf_overrides={"architectures": ["MIPruner<Arch>"]}`` selects the pruning-aware model and
   processor that :func:`mipruner_vllm.plugin.register` registered under their own names. Stock
   architectures are never replaced, so an engine without the override is stock vLLM.
2. ``--trust-request-mm-kwargs`` (server only): vLLM 0.32 rejects per-request
   ``mm_processor_kwargs`` without it. Offline ``LLM.generate/chat`` has no such gate.
3. For the M-RoPE models (Qwen family) the runner must call the model's
   ``recompute_mrope_positions``. vLLM arms that only when ``video_pruning_rate > 0`` on GPU,
   and never on CPU (its CPU runner forgets to), so on CPU the plugin ships a worker class that
   arms it (``worker_cls``), and on GPU we pass a positive ``video_pruning_rate``. The MIPruner
   models ignore the rate itself: they never run vLLM's EVS, so videos are not pruned twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

#: Stock vLLM architecture name -> the pruning-aware name the plugin registers.
PRUNING_ARCHITECTURES: dict[str, str] = {
    "Qwen2VLForConditionalGeneration": "MIPrunerQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "MIPrunerQwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "MIPrunerQwen3VLForConditionalGeneration",
    "LlavaForConditionalGeneration": "MIPrunerLlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "MIPrunerLlavaNextForConditionalGeneration",
}

#: Pruning-aware name -> lazy ``module:Class`` reference for ``ModelRegistry.register_model``.
MODEL_CLASSES: dict[str, str] = {
    "MIPrunerQwen2VLForConditionalGeneration":
        "mipruner_vllm.integration.models.qwen2_vl:MIPrunerQwen2VLForConditionalGeneration",
    "MIPrunerQwen2_5_VLForConditionalGeneration":
        "mipruner_vllm.integration.models.qwen2_5_vl:MIPrunerQwen2_5_VLForConditionalGeneration",
    "MIPrunerQwen3VLForConditionalGeneration":
        "mipruner_vllm.integration.models.qwen3_vl:MIPrunerQwen3VLForConditionalGeneration",
    "MIPrunerLlavaForConditionalGeneration":
        "mipruner_vllm.integration.models.llava:MIPrunerLlavaForConditionalGeneration",
    "MIPrunerLlavaNextForConditionalGeneration":
        "mipruner_vllm.integration.models.llava_next:MIPrunerLlavaNextForConditionalGeneration",
}

#: Pruning-aware architectures that use M-RoPE and so need the runner's position recompute.
MROPE_ARCHITECTURES: frozenset[str] = frozenset(
    {
        "MIPrunerQwen2VLForConditionalGeneration",
        "MIPrunerQwen2_5_VLForConditionalGeneration",
        "MIPrunerQwen3VLForConditionalGeneration",
    }
)

#: The CPU worker that arms ``recompute_mrope_positions`` (vLLM's CPU runner never does).
CPU_WORKER_CLS = "mipruner_vllm.integration.workers.MIPrunerCPUWorker"

#: Any value in (0, 1) arms vLLM's GPU runners (V1 and V2) for position recompute. The MIPruner
#: models never apply vLLM's own video pruning (EVS), so the value has no other effect.
GPU_ARMING_VIDEO_PRUNING_RATE = 0.5

Device = Literal["cpu", "cuda"]


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
    out = [PRUNING_ARCHITECTURES.get(a, a) for a in archs if a in PRUNING_ARCHITECTURES or a in MODEL_CLASSES]
    if not out:
        raise ValueError(
            f"no MI-Pruner support for architectures {archs}; supported: "
            + ", ".join(PRUNING_ARCHITECTURES)
        )
    return out


def platform_device() -> Device:
    """Where vLLM will run on this machine: ``"cpu"`` for its CPU platform, else ``"cuda"``.

    Imports vLLM's platform detection (not the engine); the default of the launch helpers, so a
    CUDA box never gets the CPU worker class unless asked for it.
    """
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "cuda"


def engine_overrides(model: str | Path | Sequence[str], device: Device | None = None) -> dict[str, Any]:
    """``EngineArgs`` / ``LLM(...)`` keyword arguments that enable MI-Pruner for ``model``.

    ``model`` is a checkpoint directory (its ``config.json`` names the architecture) or the
    architecture name(s). ``device`` is where the engine runs (default: vLLM's platform here,
    :func:`platform_device`): ``"cpu"`` adds the arming worker class, ``"cuda"`` a positive
    ``video_pruning_rate`` (M-RoPE models only).
    """
    archs = pruning_architectures(model)
    if device is None and any(a in MROPE_ARCHITECTURES for a in archs):
        device = platform_device()
    kwargs: dict[str, Any] = {"hf_overrides": {"architectures": archs}}
    if any(a in MROPE_ARCHITECTURES for a in archs):
        if device == "cpu":
            kwargs["worker_cls"] = CPU_WORKER_CLS
        else:
            kwargs["video_pruning_rate"] = GPU_ARMING_VIDEO_PRUNING_RATE
    return kwargs


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
