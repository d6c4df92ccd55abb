# SPDX-License-Identifier: Apache-2.0
"""Model side of the plugin (worker process): the vLLM hooks of the encoder path.

:class:`MIPrunerModelMixin` wraps a stock model's ``embed_multimodal``. A family subclass encodes
a batch exactly as stock vLLM does (vision tower + projector) and describes each item
(:class:`EncodedItem`), and says how to read a batch's items and sizes from its kwargs
(:class:`BatchLayout`). The mixin, for one encoder batch:

1. takes each item's unpruned output from the worker's store (:mod:`..store`, keyed by the
   content hash the processor sent), from an identical item earlier in the batch, or from the
   tower; the tower runs on the missing items only, in calls of at most the unpruned tokens
   vLLM's memory profile covered (its scheduler charges the *pruned* counts, so a batch can hold
   many more images than were profiled);
2. unbatches each item's pruning parameters and query ids from the processor's fields, and
   selects every pruned item in one call
   (:func:`~mipruner_vllm.pruning.encoder_batch.select_items`: scoring on the first
   ``score_dim`` columns, per frame for frame-wise items, the uniform-stride fallback for an
   item that cannot be selected), with the query embedded by the LLM's own *input* embedding
   table (``get_language_model().embed_input_ids``; tensor-parallel safe);
3. records what it selected (metrics, the debug JSONL with ``MIPRUNER_DEBUG_DIR``);
4. keeps the selected rows plus the item's always-kept rows, in original order, so each item
   returns exactly ``n_keep(N_V) + n_fixed`` rows, the count the processor gave it;
5. for M-RoPE models whose runner is armed, appends the kept rows' (t, h, w) positions
   (:mod:`mipruner_vllm.integration.mrope`) for ``recompute_mrope_positions`` to strip. Every item
   carries them once the runner is armed, unpruned ones included (the runner strips the last
   position columns of every media row, whatever the item).

Items that do not prune are returned untouched, so keep_ratio = 1 is bit-identical to stock.
The batch logic itself (planning, selection, fallback, timing) is vLLM-free and lives in
:mod:`mipruner_vllm.pruning.encoder_batch`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from mipruner_vllm import detail
from mipruner_vllm.config import get_settings
from mipruner_vllm.integration.fields import (
    content_field,
    decode_content_keys,
    decode_params,
    detail_token,
    params_field,
    text_field,
    unbatch,
)
from mipruner_vllm.integration.mrope import (
    KEEP_PROVISIONAL,
    POSITION_COLUMNS,
    POSITION_LIMIT,
    encode_positions,
)
from mipruner_vllm.integration.store import EncoderStore
from mipruner_vllm.metrics import observe_encoder_store, observe_fallback, observe_selection
from mipruner_vllm.pruning.dispatch import warmup
from mipruner_vllm.pruning.encoder_batch import (
    BatchLayout,
    EncodedItem,
    ItemRequest,
    ItemSelection,
    SelectionTimer,
    append_jsonl,
    detail_record,
    plan_store_lookups,
    plan_tower_calls,
    select_items,
    selection_record,
    slice_batch,
)

logger = logging.getLogger(__name__)


def item_requests(
    items: list[EncodedItem], fields: dict[str, tuple[Any, Any]]
) -> list[ItemRequest | None]:
    """Each item's parameters and query ids, unbatched from the processor's fields in item order.

    ``fields[modality]`` is that modality's (params, texts) kwargs; items of a modality without
    fields get ``None`` (one modality per batch in vLLM, but nothing here relies on it).
    """
    per_modality: dict[str, list[ItemRequest]] = {}
    for modality, (params_value, texts_value) in fields.items():
        params_list = (
            list(params_value.unbind(0))
            if isinstance(params_value, torch.Tensor)
            else list(params_value)
        )
        text_list = (
            unbatch(texts_value, len(params_list))
            if texts_value is not None
            else [torch.zeros(0, dtype=torch.long)] * len(params_list)
        )
        per_modality[modality] = [
            ItemRequest(decode_params(p), t.reshape(-1).long(), detail_token(p))
            for p, t in zip(params_list, text_list, strict=True)
        ]
    cursor: dict[str, int] = {}
    out: list[ItemRequest | None] = []
    for item in items:
        if item.modality not in per_modality:
            out.append(None)
            continue
        i = cursor.get(item.modality, 0)
        cursor[item.modality] = i + 1
        out.append(per_modality[item.modality][i])
    return out


class MIPrunerModelMixin:
    """``embed_multimodal`` with the encoder store, bounded tower calls and per-item selection."""

    #: Modalities the processor attaches pruning fields to.
    mipruner_modalities: tuple[str, ...] = ("image",)
    #: True when the runner strips position columns (set by the M-RoPE families at init).
    mipruner_positions_armed: bool = False
    #: The store of unpruned encoder outputs (replaced per instance at init).
    mipruner_store: EncoderStore = EncoderStore(0)
    _mipruner_vllm_config: Any = None
    _mipruner_tower_limit: int | None = None
    _mipruner_first_rank: bool | None = None
    _mipruner_timer_instance: SelectionTimer | None = None

    def __init__(self, *, vllm_config: Any, prefix: str | None = None) -> None:
        # vLLM requires these two named parameters; an unset prefix keeps the stock default.
        kwargs = (
            {"vllm_config": vllm_config}
            if prefix is None
            else {"vllm_config": vllm_config, "prefix": prefix}
        )
        super().__init__(**kwargs)  # type: ignore[call-arg]
        settings = get_settings()
        self.mipruner_store = EncoderStore(
            settings.encoder_store_bytes, settings.encoder_store_device
        )
        self._mipruner_vllm_config = vllm_config

    # -- family hooks --------------------------------------------------------------------------

    def _mipruner_encode(self, **kwargs: object) -> list[EncodedItem]:
        """Encode one batch exactly as stock ``embed_multimodal`` does, one entry per item."""
        raise NotImplementedError

    def _mipruner_layout(self, kwargs: dict[str, Any]) -> BatchLayout | None:
        """Items and their unpruned costs, read from the kwargs (``None``: no tower input, e.g.
        precomputed embeddings; such batches bypass the store and the splitting)."""
        return None

    # -- load time -------------------------------------------------------------------------------

    def load_weights(self, weights: Any) -> Any:
        # Stored outputs belong to the old weights (vLLM's reset_encoder_cache does not know the
        # store); load_weights also runs when weights are reloaded or updated in place.
        self.mipruner_store.clear()
        loaded = super().load_weights(weights)  # type: ignore[misc]
        self._mipruner_warm_up()
        return loaded

    def _mipruner_warm_up(self) -> None:
        """Compile the selection kernels now, not inside the first pruned request's step.

        On a CUDA device the dispatcher's :func:`~mipruner_vllm.pruning.dispatch.warmup` launches
        every kernel variant the launcher can pick for the model's dtype and hidden size. A no-op on
        CPU (the torch reference needs none).
        """
        try:
            param = next(self.parameters())  # type: ignore[attr-defined]
        except (StopIteration, AttributeError):
            return
        if param.device.type != "cuda" or get_settings().backend == "torch":
            return
        hidden = int(self.config.get_text_config().hidden_size)  # type: ignore[attr-defined]
        # The embeddings' dtype (the model dtype), not a weight's (quantised weights are integers).
        config = self._mipruner_vllm_config
        dtype = config.model_config.dtype if config is not None else param.dtype
        if not dtype.is_floating_point:
            return
        try:
            report = warmup(param.device, dtype, hidden, backend=get_settings().backend)
        except Exception as exc:  # a warm-up problem must not stop the model from loading
            logger.warning(
                "mipruner: selection warm-up failed (%s); kernels compile on first use", exc
            )
            return
        logger.info("mipruner: selection warm-up: %s", report)

    # -- the encoder path ------------------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object) -> Any:
        fields: dict[str, tuple[Any, Any]] = {}
        contents: dict[str, Any] = {}
        for modality in self.mipruner_modalities:
            params = kwargs.pop(params_field(modality), None)
            texts = kwargs.pop(text_field(modality), None)
            content = kwargs.pop(content_field(modality), None)
            if params is not None:
                fields[modality] = (params, texts)
            if content is not None:
                contents[modality] = content
        layout = self._mipruner_layout(dict(kwargs))
        if layout is None:
            items = self._mipruner_encode(**kwargs)
        else:
            items = self._mipruner_encode_stored(
                dict(kwargs), layout, contents.get(layout.modality)
            )
        if not items:
            return []
        return self._mipruner_select(items, fields)

    def _mipruner_limit(self) -> int:
        """Unpruned tokens one tower call may carry: what vLLM's memory profile ran.

        vLLM profiles the encoder with ``max_items_per_batch`` items of the largest per-item
        size (``MultiModalBudget``; the plugin never changes those sizes). Its scheduler then
        charges the *pruned* count, so at a low keep ratio a batch can carry many more items
        than that; the model cuts such batches into calls within the profiled total.
        """
        if self._mipruner_tower_limit is None and get_settings().encoder_tower_tokens is not None:
            self._mipruner_tower_limit = int(get_settings().encoder_tower_tokens)  # type: ignore[arg-type]
            logger.info(
                "mipruner: tower calls bounded to %d unpruned tokens (setting)",
                self._mipruner_tower_limit,
            )
        if self._mipruner_tower_limit is None:
            limit = 0
            try:
                if self._mipruner_vllm_config is None:
                    raise RuntimeError("no vLLM config (the model was built outside vLLM)")
                from vllm.multimodal import MULTIMODAL_REGISTRY
                from vllm.multimodal.encoder_budget import MultiModalBudget

                budget = MultiModalBudget(
                    self._mipruner_vllm_config, MULTIMODAL_REGISTRY, enable_cache=False
                )
                if budget.mm_max_toks_per_item:
                    modality = budget.get_modality_with_max_tokens()
                    limit = (
                        budget.mm_max_items_per_batch[modality]
                        * budget.mm_max_toks_per_item[modality]
                    )
            except Exception as exc:  # never fatal: without a bound the batch runs as vLLM sent it
                logger.warning(
                    "mipruner: could not read vLLM's encoder profile (%s); tower calls unbounded",
                    exc,
                )
            self._mipruner_tower_limit = limit
            logger.info(
                "mipruner: tower calls bounded to %d unpruned tokens (vLLM's encoder profile)",
                limit,
            )
        return self._mipruner_tower_limit

    def _mipruner_is_first_rank(self) -> bool:
        if self._mipruner_first_rank is None:
            try:
                from vllm.distributed import get_tensor_model_parallel_rank

                self._mipruner_first_rank = get_tensor_model_parallel_rank() == 0
            except Exception:  # no parallel state (unit tests): this process is the only rank
                self._mipruner_first_rank = True
        return self._mipruner_first_rank

    def _mipruner_encode_stored(
        self, kwargs: dict[str, Any], layout: BatchLayout, content: Any
    ) -> list[EncodedItem]:
        """The batch's items: from the store, from an identical item of the batch, or the tower.

        Every rank takes the same path (the store's state is a function of the batch sequence);
        the tower runs once per distinct missing content, in calls of at most the profiled size.
        """
        n = len(layout.costs)
        keys = decode_content_keys(content, n) if content is not None else [None] * n
        store = self.mipruner_store
        plan = plan_store_lookups(keys, layout.costs, lambda key, cost: store.get(key, tag=cost))
        results = plan.results
        calls = plan_tower_calls(layout.costs, plan.todo, self._mipruner_limit())
        evictions = 0
        for call in calls:
            encoded = self._mipruner_encode(**slice_batch(kwargs, layout, call))
            if len(encoded) != len(call):
                raise RuntimeError(
                    f"mipruner: the tower returned {len(encoded)} items for {len(call)}"
                )
            for i, item in zip(call, encoded, strict=True):
                results[i] = item
                if keys[i] is not None:
                    evictions += store.put(keys[i], item, tag=layout.costs[i])
        for i, source in plan.copies:
            results[i] = results[source]
        if self._mipruner_is_first_rank() and any(k is not None for k in keys):
            observe_encoder_store(layout.modality, plan.hits, plan.misses, evictions, store.bytes)
        debug_dir = get_settings().debug_dir
        if debug_dir:
            append_jsonl(
                Path(debug_dir) / "encoder.jsonl",
                {
                    "pid": os.getpid(),
                    "modality": layout.modality,
                    "items": n,
                    "costs": layout.costs,
                    "keys": [k.hex()[:16] if k is not None else None for k in keys],
                    "hits": plan.hits,
                    "misses": plan.misses,
                    "evictions": evictions,
                    "store_bytes": store.bytes,
                    "store_entries": len(store),
                    "limit": self._mipruner_limit(),
                    "tower_calls": [sum(layout.costs[i] for i in call) for call in calls],
                },
            )
        return results

    # -- selection -------------------------------------------------------------------------------

    def _mipruner_select(
        self, items: list[EncodedItem], fields: dict[str, tuple[Any, Any]]
    ) -> list[torch.Tensor]:
        """Unbatch the fields, select the pruned items, record, and assemble the outputs."""
        requests = item_requests(items, fields)
        if self._mipruner_timer_instance is None:
            self._mipruner_timer_instance = SelectionTimer(observe_selection)
        chosen = select_items(
            items,
            requests,
            self._mipruner_embed_texts,
            self._mipruner_timer_instance,
            observe_fallback,
        )
        self._mipruner_record(items, requests, chosen)
        out: list[torch.Tensor] = []
        for k, item in enumerate(items):
            kept = chosen[k].kept if k in chosen else None
            emb = item.embeds if kept is None else item.embeds.index_select(0, kept)
            if self.mipruner_positions_armed and item.positions is not None:
                emb = torch.cat([emb, self._mipruner_position_columns(item, kept, emb)], dim=1)
            out.append(emb)
        return out

    def _mipruner_record(
        self,
        items: list[EncodedItem],
        requests: list[ItemRequest | None],
        chosen: dict[int, ItemSelection],
    ) -> None:
        """The pruning detail of each item that asked for it (rank 0 only: every rank selects
        the same), and the debug JSONL line of each pruned item (``MIPRUNER_DEBUG_DIR``)."""
        asked = [k for k, r in enumerate(requests) if r is not None and r.detail_token]
        if asked and self._mipruner_is_first_rank():
            for k in asked:
                request = requests[k]
                record = detail_record(items[k], request, chosen.get(k))  # type: ignore[arg-type]
                detail.write_item(request.detail_token, record)  # type: ignore[union-attr]
            detail.sweep_now_and_then()  # files nobody read (offline use, aborted requests)
        debug_dir = get_settings().debug_dir
        if not debug_dir or not chosen:
            return
        path = Path(debug_dir) / "selections.jsonl"
        for k, selection in chosen.items():
            append_jsonl(path, selection_record(items[k], requests[k], selection))  # type: ignore[arg-type]

    @staticmethod
    def _mipruner_position_columns(
        item: EncodedItem, kept: torch.Tensor | None, emb: torch.Tensor
    ) -> torch.Tensor:
        """The kept rows' position columns on the embeddings' device; never raises, never syncs.

        The item's positions live on the host; the range check runs there on all of them (the
        kept ones are a subset), then they are copied to the device (pinned, non-blocking) and
        indexed there by the kept indices, so no kept index is read back to the host. An item
        with a position too large to carry exactly (>= 65,536) sends the "keep provisional"
        marker (:data:`~mipruner_vllm.integration.mrope.KEEP_PROVISIONAL`) instead: its rows keep
        the positions ``get_mrope_input_positions`` gave them, and the item is counted.
        """
        positions = item.positions.cpu()  # type: ignore[union-attr]
        n_out = emb.shape[0]
        if positions.numel() and int(positions.max()) >= POSITION_LIMIT:
            _warn_position_fallback(
                "position_overflow",
                f"media position {int(positions.max())} >= {POSITION_LIMIT}",
                n_out,
            )
            return torch.full(
                (n_out, POSITION_COLUMNS), KEEP_PROVISIONAL, dtype=emb.dtype, device=emb.device
            )
        if emb.is_cuda:
            positions = positions.pin_memory().to(emb.device, non_blocking=True)
        else:
            positions = positions.to(emb.device)
        if kept is not None:
            positions = positions.index_select(0, kept.to(positions.device))
        return encode_positions(positions, emb.dtype, check=False)

    def _mipruner_embed_texts(
        self, ids: list[torch.Tensor], visuals: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Query embeddings from the LLM's input embedding table, one call for the batch."""
        device = visuals[0].device
        lengths = [int(t.numel()) for t in ids]
        if sum(lengths) == 0:
            return [v.new_zeros((0, v.shape[1])) for v in visuals]
        flat = torch.cat([t.to(device) for t in ids])
        embeds = self.get_language_model().embed_input_ids(flat)  # type: ignore[attr-defined]
        return [e.to(v.dtype) for e, v in zip(torch.split(embeds, lengths), visuals, strict=True)]


def _warn_position_fallback(reason: str, detail: str, rows: int) -> None:
    """One warning and one count per media item whose positions cannot be carried."""
    logger.warning(
        "mipruner: a media item of %d rows keeps its provisional positions (%s): %s",
        rows, reason, detail,
    )  # fmt: skip
    observe_fallback(reason)


__all__ = ["POSITION_COLUMNS", "BatchLayout", "EncodedItem", "MIPrunerModelMixin", "item_requests"]
