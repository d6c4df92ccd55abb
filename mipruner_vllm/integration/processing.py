# SPDX-License-Identifier: Apache-2.0
"""Processor side of the plugin (API-server process): parameters in, placeholders sized, hash.

vLLM fixes the number of placeholder tokens of every media item here, before the encoder runs,
and the model must later return exactly that many rows per item. The
mixins below wrap a stock vLLM processor so that, per request:

1. The pruning fields of ``mm_processor_kwargs`` (``keep_ratio``, ``keep_tokens``, ``mi_lambda``,
   ``mi_tau``, ``pruning_method`` and the ablation switches; see
   :data:`mipruner_vllm.params.REQUEST_FIELDS`) are popped and validated by
   :func:`~mipruner_vllm.params.params_from_request`, defaults from the settings object. A bad
   value raises :class:`~mipruner_vllm.errors.PruningParameterError` (a ``ValueError``), which vLLM
   reports as a rejected request (HTTP 400 online); the engine is not affected. The fields never
   reach Hugging Face (:class:`MIPrunerInfoMixin` strips them from every processor lookup).
2. Every item's stock hash (what vLLM would give it without the plugin: media plus every
   non-pruning kwarg) is computed first and travels as
   :data:`~mipruner_vllm.integration.fields.CONTENT_KWARG`; it becomes the item's content key
   for the worker's store of unpruned encoder outputs (:mod:`~mipruner_vllm.integration.store`).
   When the request prunes, :data:`~mipruner_vllm.integration.fields.PRUNING_KWARG` is put back
   into the kwargs: the normalised parameters (:func:`~mipruner_vllm.params.request_fields`), the
   query token ids of every item (:mod:`~mipruner_vllm.integration.query`) and the selection
   version. Each item's ``mm_hash``, which keys the processor cache, the encoder cache and the
   prefix-cache blocks of the item, is then its content hash plus the parameters, *its
   own* query ids and the version (:meth:`MIPrunerProcessorMixin._get_mm_hashes`), so no cache can
   serve one prompt's selection to another, and one image in two turns with two questions is two
   items. A request that does not prune keeps stock vLLM's hashes, so unpruned requests share
   caches as before.
3. Each item gets the per-item fields of :mod:`~mipruner_vllm.integration.fields` (parameters,
   query ids, content key), and its
   placeholder run is ``n_keep(N_V) + n_fixed`` tokens long, ``n_keep`` being THE budget rule
   (:meth:`~mipruner_vllm.params.PruningParams.n_keep`) and ``n_fixed`` the tokens a
   family always keeps (LLaVA-NeXT row newlines; 0 elsewhere).
4. :func:`mipruner_vllm.outcome.record_item` is called once per item and request.
5. A request that asks ``pruning_detail`` gives each item a fresh detail token
   (:mod:`mipruner_vllm.detail`): in the spec, in the item's hash (so no cache serves the item
   without the worker selecting it) and in the params vector's ``pruning_detail`` slot; the
   token and the item's token grid (:meth:`MIPrunerProcessorMixin._mipruner_item_grid`) are
   recorded with the item's outcome, and so is whether it also asked ``pruning_detail_scores``
   (which travels in its own slot of the params vector, like every parameter).

Memory profiling (``get_dummy_mm_inputs``) always runs unpruned, so the encoder is profiled at
its true peak whatever the default keep ratio is.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing.processor import PromptReplacement, PromptUpdateDetails

from mipruner_vllm.detail import new_token
from mipruner_vllm.errors import PruningParameterError
from mipruner_vllm.integration.fields import (
    CONTENT_KWARG,
    KEEP_ALL,
    PRUNING_KWARG,
    SELECTION_VERSION,
    content_field,
    decode_params,
    detail_token,
    encode_content_key,
    encode_params,
    params_field,
    strip_pruning_kwargs,
    text_field,
)
from mipruner_vllm.integration.query import query_token_ids
from mipruner_vllm.outcome import record_item
from mipruner_vllm.params import (
    PruningParams,
    params_from_request,
    request_fields,
    split_pruning_fields,
)

_profiling: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mipruner_profiling", default=False
)


@dataclasses.dataclass
class PrunedPlaceholder(PromptUpdateDetails):
    """Placeholder tokens of one item, with the numbers behind them.

    vLLM caches resolved prompt updates next to processed items, so these numbers come back on a
    processor-cache hit too, when the item itself is not re-processed.
    """

    n_visual: int = 0
    n_kept: int = 0
    method: str = "none"
    detail_token: int = 0
    grid: tuple[int, int, int] | None = None
    detail_scores: bool = False


def _cache_missing(
    per_item: Mapping[str, list[Any]], mm_is_cached: Mapping[str, Sequence[bool]]
) -> dict:
    """The per-item values of the items the processor cache does not hold, per modality."""
    return {
        m: [
            v
            for v, cached in zip(values, mm_is_cached.get(m, [False] * len(values)), strict=True)
            if not cached
        ]
        for m, values in per_item.items()
    }


class MIPrunerInfoMixin:
    """Processing-info mixin: pruning keys never reach a Hugging Face processor (each new value
    would load another processor, and unknown kwargs could reach its ``__call__``).

    vLLM passes the request's ``mm_processor_kwargs`` to ``get_hf_processor``, whose loader is an
    ``lru_cache`` keyed by them: an unknown key would load a new processor from disk for every
    distinct keep ratio, or be forwarded to the HF ``__call__``.
    """

    def get_hf_processor(self, **kwargs: object) -> Any:
        return super().get_hf_processor(**strip_pruning_kwargs(kwargs))  # type: ignore[misc]


class MIPrunerProcessorMixin:
    """Multimodal-processor mixin; a family subclass provides the three hooks at the end."""

    #: Modalities whose items are pruned (and carry the pruning fields).
    mipruner_modalities: tuple[str, ...] = ("image",)

    # -- entry: parameters, query text, hash ---------------------------------------------------

    def get_dummy_mm_inputs(self, *args: Any, **kwargs: Any) -> Any:
        token = _profiling.set(True)
        try:
            return super().get_dummy_mm_inputs(*args, **kwargs)  # type: ignore[misc]
        finally:
            _profiling.reset(token)

    def apply(self, inputs: Any, timing_ctx: Any) -> Any:
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        for reserved in (PRUNING_KWARG, CONTENT_KWARG):
            if reserved in kwargs:
                raise PruningParameterError(reserved, "is reserved for the mipruner plugin")
        # A misspelt pruning key (keep_ration) is an error here too, not a kwarg for Hugging Face.
        request, kwargs = split_pruning_fields(kwargs)
        params = KEEP_ALL if _profiling.get() else params_from_request(request)
        # Stock vLLM's hashes (no pruning field is in ``kwargs`` yet): the content keys.
        kwargs[CONTENT_KWARG] = self._mipruner_content(
            dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs)
        )
        wants_detail = bool(params.pruning_detail) and not _profiling.get()
        if params.prunes or wants_detail:
            counts = inputs.mm_data_items.get_all_counts()
            texts = query_token_ids(
                self.info.get_tokenizer(),
                inputs.prompt,
                self._mipruner_media_tokens(),  # type: ignore[attr-defined]
            )
            kwargs[PRUNING_KWARG] = {
                "params": request_fields(params),
                "text": {
                    m: (texts.get(m, []) + [[]] * counts.get(m, 0))[: counts.get(m, 0)]
                    for m in self.mipruner_modalities
                    if counts.get(m, 0)
                },
                "version": SELECTION_VERSION,
            }
            if wants_detail:
                kwargs[PRUNING_KWARG]["detail"] = {
                    m: [new_token() for _ in range(counts.get(m, 0))]
                    for m in self.mipruner_modalities
                    if counts.get(m, 0)
                }
        inputs = dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs)
        return super().apply(inputs, timing_ctx)  # type: ignore[misc]

    def _mipruner_content(self, inputs: Any) -> dict[str, Any]:
        """Stock vLLM's hash of every item, and the store key of each (``None``: never stored).

        ``inputs`` carries no pruning field, so the hashes are exactly the ones stock vLLM gives
        the items (media, every processor kwarg, per-modality overrides such as Qwen3-VL's
        per-video kwargs). Not stored: memory-profiling dummies, and items named by a client's
        ``multi_modal_uuids`` (a uuid is the client's word, not a content hash: sharing a stored
        output by it would let one client's uuid read another's image).
        """
        stock = {m: list(h) for m, h in super()._get_mm_hashes(inputs).items()}  # type: ignore[misc]
        uuids = inputs.mm_uuid_items or {}
        store: dict[str, list[str | None]] = {}
        for modality, hashes in stock.items():
            given = list(uuids.get(modality) or [None] * len(hashes))
            store[modality] = [
                None if _profiling.get() or uuid is not None else h
                for h, uuid in zip(hashes, given, strict=True)
            ]
        return {"stock": stock, "store": store}

    def _get_mm_hashes(self, inputs: Any) -> Any:
        """Each item's identity for vLLM's caches: stock's hash, plus the item's own selection.

        An item of a pruning request is hashed from its content hash, the request's parameters,
        *its own* query token ids and the selection version. So the same image asked about in two
        turns with two questions gives two identities (each selected for its own question), while
        the hash never depends on the other items' questions. Unpruned requests keep stock hashes.
        """
        kwargs = inputs.hf_processor_mm_kwargs
        content = kwargs.get(CONTENT_KWARG)
        if content is None:  # not reached through apply(): stock hashes of the stripped kwargs
            content = self._mipruner_content(
                dataclasses.replace(inputs, hf_processor_mm_kwargs=strip_pruning_kwargs(kwargs))
            )
        stock = content["stock"]
        spec = kwargs.get(PRUNING_KWARG)
        if spec is None:
            return stock
        from vllm.multimodal.hasher import MultiModalHasher

        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm  # type: ignore[attr-defined]
        out: dict[str, list[str]] = {}
        for modality, hashes in stock.items():
            texts = spec["text"].get(modality)
            if texts is None:
                out[modality] = list(hashes)
                continue
            tokens = spec.get("detail", {}).get(modality, [0] * len(hashes))
            out[modality] = [
                MultiModalHasher.hash_kwargs(
                    algorithm,
                    mipruner_item={
                        "content": h,
                        "params": spec["params"],
                        "text": texts[i],
                        "version": spec["version"],
                        "detail": tokens[i],
                    },
                )
                for i, h in enumerate(hashes)
            ]
        return out

    def _get_cache_missing_processor_kwargs(
        self, inputs: Any, mm_is_cached: Mapping[str, Sequence[bool]]
    ) -> Any:
        # Only the items missing from the processor cache are re-processed: keep their texts and
        # content keys. Both are read from the request and re-attached at the top level, because
        # some processors (Qwen3-VL) rebuild the kwargs here and may move flat keys into scopes.
        spec = inputs.hf_processor_mm_kwargs.get(PRUNING_KWARG)
        content = inputs.hf_processor_mm_kwargs.get(CONTENT_KWARG)
        kwargs = dict(super()._get_cache_missing_processor_kwargs(inputs, mm_is_cached))  # type: ignore[misc]
        for scope in ("images_kwargs", "videos_kwargs"):
            if isinstance(kwargs.get(scope), Mapping):
                kwargs[scope] = {
                    k: v
                    for k, v in kwargs[scope].items()
                    if k not in (PRUNING_KWARG, CONTENT_KWARG)
                }
        if content is not None:
            kwargs[CONTENT_KWARG] = {
                **content,
                "store": _cache_missing(content["store"], mm_is_cached),
            }
        if spec is None:
            kwargs.pop(PRUNING_KWARG, None)
            return kwargs
        kwargs[PRUNING_KWARG] = {**spec, "text": _cache_missing(spec["text"], mm_is_cached)}
        if "detail" in spec:
            kwargs[PRUNING_KWARG]["detail"] = _cache_missing(spec["detail"], mm_is_cached)
        return kwargs

    # -- per-item fields ---------------------------------------------------------------------------

    def _apply_hf_processor_main(self, mm_items: Any, hf_kwargs: Mapping[str, object]) -> Any:
        spec = hf_kwargs.get(PRUNING_KWARG)
        content = hf_kwargs.get(CONTENT_KWARG)
        processed = super()._apply_hf_processor_main(mm_items, strip_pruning_kwargs(hf_kwargs))  # type: ignore[misc]
        counts = mm_items.get_all_counts()
        if spec is not None:
            # Validated in apply(); the spec carries the normalised fields (request_fields).
            params = PruningParams.from_request_fields(spec["params"])  # type: ignore[index]
        for modality in self.mipruner_modalities:
            n = counts.get(modality, 0)
            if not n:
                continue
            if spec is None:
                vectors = [encode_params(KEEP_ALL)] * n
                texts = [torch.zeros(0, dtype=torch.int64)] * n
            else:
                tokens = spec.get("detail", {}).get(modality, [0] * n)  # type: ignore[union-attr]
                vectors = [encode_params(params, token) for token in tokens]
                texts = [torch.tensor(ids, dtype=torch.int64) for ids in spec["text"][modality]]  # type: ignore[index]
            processed[params_field(modality)] = torch.stack(vectors)
            processed[text_field(modality)] = texts
            keys = (
                content["store"].get(modality, [None] * n)
                if isinstance(content, Mapping)
                else [None] * n
            )  # type: ignore[union-attr]
            processed[content_field(modality)] = torch.stack([encode_content_key(k) for k in keys])
        return processed

    def _get_mm_fields_config(
        self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        config = dict(
            super()._get_mm_fields_config(hf_inputs, strip_pruning_kwargs(hf_processor_mm_kwargs))  # type: ignore[misc]
        )
        for modality in self.mipruner_modalities:
            config[params_field(modality)] = MultiModalFieldConfig.batched(
                modality, keep_on_cpu=True
            )
            config[text_field(modality)] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
            config[content_field(modality)] = MultiModalFieldConfig.batched(
                modality, keep_on_cpu=True
            )
        return config

    # -- placeholders ------------------------------------------------------------------------------

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: Any
    ) -> Any:
        updates = super()._get_prompt_updates(
            mm_items, strip_pruning_kwargs(hf_processor_mm_kwargs), out_mm_kwargs
        )  # type: ignore[misc]
        out = []
        for update in updates:
            if update.modality in self.mipruner_modalities and isinstance(
                update, PromptReplacement
            ):
                update = dataclasses.replace(
                    update,
                    replacement=partial(
                        self._pruned_replacement,
                        update.modality,
                        update.replacement,
                        mm_items,
                        out_mm_kwargs,
                    ),
                )
            out.append(update)
        return out

    def _pruned_replacement(
        self, modality: str, stock: Any, mm_items: Any, out_mm_kwargs: Any, item_idx: int
    ) -> PrunedPlaceholder:
        full = stock(item_idx) if callable(stock) else stock
        full_ids = full.full if isinstance(full, PromptUpdateDetails) else list(full)
        item = out_mm_kwargs[modality][item_idx]
        params = decode_params(item[params_field(modality)].data)
        n_visual, n_fixed = self._mipruner_item_budget(
            modality, item_idx, mm_items, item, len(full_ids)
        )
        n_kept = params.n_keep(n_visual)
        token = detail_token(item[params_field(modality)].data)
        return PrunedPlaceholder(
            full=[self._mipruner_placeholder_id(modality)] * (n_kept + n_fixed),
            n_visual=n_visual,
            n_kept=n_kept,
            method=params.applied_method,
            detail_token=token,
            grid=self._mipruner_item_grid(modality, item, n_visual) if token else None,
            detail_scores=bool(token and params.pruning_detail_scores),
        )

    def _maybe_apply_prompt_updates(self, mm_items: Any, mm_res: Any) -> Any:
        result = super()._maybe_apply_prompt_updates(mm_items, mm_res)  # type: ignore[misc]
        if not _profiling.get():
            for modality, per_item in mm_res.prompt_updates.items():
                for updates in per_item:
                    for update in updates:
                        content = update.content
                        if isinstance(content, PrunedPlaceholder):
                            # An item kept whole (a budget above its N_V) is labelled "none",
                            # whatever method was asked for: nothing was selected.
                            kept_whole = content.n_kept >= content.n_visual
                            method = "none" if kept_whole else content.method
                            record_item(
                                modality,
                                content.n_visual,
                                content.n_kept,
                                method,
                                detail_token=content.detail_token,
                                grid=content.grid,
                                detail_scores=content.detail_scores,
                            )
        return result

    # -- family hooks ------------------------------------------------------------------------------

    def _mipruner_media_tokens(self) -> dict[int, str]:
        """Unexpanded placeholder token id -> modality, as they appear in the templated prompt."""
        raise NotImplementedError

    def _mipruner_placeholder_id(self, modality: str) -> int:
        """The token id that fills an item's placeholder run."""
        raise NotImplementedError

    def _mipruner_item_budget(
        self, modality: str, item_idx: int, mm_items: Any, item: Any, n_stock: int
    ) -> tuple[int, int]:
        """``(N_V, n_fixed)`` of an item: prunable visual tokens and always-kept tokens.

        ``n_stock`` is the stock placeholder count; the default reads it as all prunable.
        """
        return n_stock, 0

    def _mipruner_item_grid(
        self, modality: str, item: Any, n_visual: int
    ) -> tuple[int, int, int] | None:
        """(t, h, w) of an item's ``n_visual`` prunable tokens in LLM tokens, row-major in the
        order the model emits them; ``None`` where they form no such grid (the default: a
        square count is read as one square frame, LLaVA's fixed 24 x 24)."""
        side = math.isqrt(n_visual)
        return (1, side, side) if side * side == n_visual else None
