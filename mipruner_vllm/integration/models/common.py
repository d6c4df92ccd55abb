# SPDX-License-Identifier: Apache-2.0
"""Model side of the plugin (worker process): the encoder path and the per-item selection.

:class:`MIPrunerModelMixin` wraps a stock model's ``embed_multimodal``. A family subclass encodes
a batch exactly as stock vLLM does (vision tower + projector) and describes each item
(:class:`EncodedItem`), and says how to read a batch's items and sizes from its kwargs
(:class:`BatchLayout`). The mixin, for one encoder batch:

1. takes each item's unpruned output from the worker's store (:mod:`..store`, keyed by the
   content hash the processor sent), from an identical item earlier in the batch, or from the
   tower; the tower runs on the missing items only, in calls of at most the unpruned tokens
   vLLM's memory profile covered (its scheduler charges the *pruned* counts, so a batch can hold
   many more images than were profiled);
2. embeds every item's query tokens with the LLM's own *input* embedding table
   (``get_language_model().embed_input_ids``; tensor-parallel safe), in one call;
3. calls :func:`~mipruner_vllm.pruning.select.select_batch` once for all pruned items of
   the batch (Triton kernels on CUDA, torch reference on CPU), scoring on the first
   ``score_dim`` columns (Qwen3-VL appends deepstack features after them); an item of several
   frames with fixed per-frame placeholder counts (Qwen3-VL video) is selected frame by frame in
   that same call, each frame with its share of the item budget. An item that cannot be selected
   (NaN/inf embeddings, any selection error) falls back to the uniform stride
   (:func:`uniform_fallback`), logged and counted; nothing here raises for data reasons, because
   an exception in ``embed_multimodal`` stops vLLM's engine;
4. keeps the selected rows plus the item's always-kept rows, in original order, so each item
   returns exactly ``n_keep(N_V) + n_fixed`` rows, the count the processor gave it;
5. for M-RoPE models whose runner is armed, appends the kept rows' (t, h, w) positions
   (:mod:`mipruner_vllm.integration.mrope`) for ``recompute_mrope_positions`` to strip. Every item
   carries them once the runner is armed, unpruned ones included (the runner strips the last
   position columns of every media row, whatever the item).

Items that do not prune are returned untouched, so keep_ratio = 1 is bit-identical to stock.
Selection latency goes to ``mipruner_vllm.metrics.observe_selection``, store and fallback counts
to the other worker metrics there; with ``MIPRUNER_DEBUG_DIR`` set, each pruned item is appended
to ``selections.jsonl`` and each encoder batch to ``encoder.jsonl`` there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from mipruner_vllm.config import get_settings
from mipruner_vllm.integration.fields import (
    content_field,
    decode_content_keys,
    decode_params,
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
from mipruner_vllm.params import request_fields
from mipruner_vllm.pruning.dispatch import warmup
from mipruner_vllm.pruning.reference import uniform_stride
from mipruner_vllm.pruning.select import Selection, select_batch

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EncodedItem:
    """One media item as the stock model would return it, plus what selection needs."""

    modality: str
    embeds: torch.Tensor  # (rows, width): exactly the stock output of the item
    score_dim: int  # columns used for scoring (the LLM hidden size)
    positions: torch.Tensor | None = None  # (rows, 3) grid positions (M-RoPE models)
    fixed: torch.Tensor | None = None  # (rows,) bool: rows always kept and never scored
    #: The rows are this many equal frames, each with its own placeholder run and budget
    #: (:meth:`~mipruner_vllm.params.PruningParams.n_keep_per_frame`; Qwen3-VL video).
    frames: int = 1


def _debug_record(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    # One write per line with O_APPEND: lines of concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _warn_fallback(reason: str, detail: str, rows: int) -> None:
    """One warning and one count per media item that falls back to the uniform stride."""
    logger.warning(
        "mipruner: a media item of %d rows falls back to the uniform-stride selection (%s): %s",
        rows, reason, detail,
    )  # fmt: skip
    observe_fallback(reason)


@dataclasses.dataclass
class BatchLayout:
    """What a family reads from one encoder batch's kwargs before running the tower.

    ``costs``: each item's unpruned embedding count (the unit of vLLM's encoder budget and memory
    profile); ``flat_rows``: for families whose inputs concatenate items along dim 0 (Qwen's
    ``pixel_values``), each item's rows there, else ``None`` (inputs stacked or listed per item).
    """

    modality: str
    costs: list[int]
    flat_rows: list[int] | None = None


def slice_batch(kwargs: dict[str, Any], layout: BatchLayout, indices: list[int]) -> dict[str, Any]:
    """The encoder kwargs of the items ``indices`` only (same layout, fewer items).

    Per-item values (a tensor or list with one entry per item) are indexed; values that
    concatenate the items along dim 0 (``layout.flat_rows``) are cut at the item boundaries;
    anything else is passed on unchanged.
    """
    n = len(layout.costs)
    if indices == list(range(n)):
        return dict(kwargs)
    bounds: list[tuple[int, int]] = []
    if layout.flat_rows is not None:
        offset = 0
        for rows in layout.flat_rows:
            bounds.append((offset, offset + rows))
            offset += rows
        total = offset
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if (
            layout.flat_rows is not None
            and isinstance(value, torch.Tensor)
            and value.dim()
            and value.shape[0] == total != n
        ):
            out[key] = torch.cat([value[bounds[i][0] : bounds[i][1]] for i in indices])
        elif isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n:
            out[key] = value[torch.tensor(indices, dtype=torch.long, device=value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            out[key] = (
                type(value)(value[i] for i in indices)
                if isinstance(value, tuple)
                else [value[i] for i in indices]
            )
        else:
            out[key] = value
    return out


def plan_tower_calls(costs: list[int], indices: list[int], limit: int) -> list[list[int]]:
    """Split ``indices`` (in order) into tower calls of at most ``limit`` unpruned tokens.

    An item larger than ``limit`` alone gets a call of its own (vLLM profiled at least one item
    of the maximum size); ``limit <= 0`` means no bound (one call).
    """
    if limit <= 0:
        return [list(indices)] if indices else []
    calls: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in indices:
        if current and used + costs[i] > limit:
            calls.append(current)
            current, used = [], 0
        current.append(i)
        used += costs[i]
    if current:
        calls.append(current)
    return calls


def uniform_fallback(n_rows: int, frames: int, params: Any) -> torch.Tensor:
    """The documented fallback selection: uniform stride, per frame for multi-frame items.

    Deterministic, needs no scores, and keeps exactly the budget the processor sized the
    placeholders for (``n_keep(N_V)``, or ``n_keep_per_frame`` shares for frame-wise items).
    """
    if frames > 1 and n_rows % frames == 0:
        per_frame = n_rows // frames
        parts = [
            uniform_stride(per_frame, budget) + frame * per_frame
            for frame, budget in enumerate(params.n_keep_per_frame(frames, per_frame))
        ]
        return torch.cat(parts)
    return uniform_stride(n_rows, params.n_keep(n_rows))


class _SelectionTimer:
    """Selection latency without host syncs: CUDA events read once they have completed.

    On CUDA the start event is recorded on the current stream right before the selection and the
    end event right after its last kernel, so the interval covers the selection only (not the
    vision tower queued before it); the interval is observed on a later batch, when
    ``end.query()`` says it is done, instead of waiting for it. On CPU it is wall time.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Any, Any, str, list[str]]] = []

    def start(self, device: torch.device) -> Any:
        self.flush()
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started: Any, label: str, backends: list[str]) -> None:
        """``label`` and ``backends``: what the dispatcher reports it ran (batch, per item)."""
        if isinstance(started, float):
            observe_selection(time.perf_counter() - started, label, backends)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((started, end, label, backends))

    def flush(self) -> None:
        still: list[tuple[Any, Any, str, list[str]]] = []
        for start, end, label, backends in self._pending:
            if end.query():
                observe_selection(start.elapsed_time(end) / 1000.0, label, backends)
            else:
                still.append((start, end, label, backends))
        self._pending = still[-64:]  # bounded even if a stream never completes


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
    _mipruner_timer_instance: _SelectionTimer | None = None

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
        results: list[EncodedItem | None] = [None] * n
        first_of: dict[bytes, int] = {}
        copies: list[tuple[int, int]] = []
        todo: list[int] = []
        hits = misses = 0
        for i, key in enumerate(keys):
            if key is not None:
                if key in first_of:  # same content earlier in this batch: one tower run for both
                    copies.append((i, first_of[key]))
                    hits += 1
                    continue
                stored = store.get(key, tag=layout.costs[i])
                if stored is not None:
                    results[i] = stored
                    first_of[key] = i
                    hits += 1
                    continue
                first_of[key] = i
                misses += 1
            todo.append(i)
        calls = plan_tower_calls(layout.costs, todo, self._mipruner_limit())
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
        for i, source in copies:
            results[i] = results[source]
        if self._mipruner_is_first_rank() and any(k is not None for k in keys):
            observe_encoder_store(layout.modality, hits, misses, evictions, store.bytes)
        debug_dir = get_settings().debug_dir
        if debug_dir:
            _debug_record(
                Path(debug_dir) / "encoder.jsonl",
                {
                    "pid": os.getpid(),
                    "modality": layout.modality,
                    "items": n,
                    "costs": layout.costs,
                    "keys": [k.hex()[:16] if k is not None else None for k in keys],
                    "hits": hits,
                    "misses": misses,
                    "evictions": evictions,
                    "store_bytes": store.bytes,
                    "store_entries": len(store),
                    "limit": self._mipruner_limit(),
                    "tower_calls": [sum(layout.costs[i] for i in call) for call in calls],
                },
            )
        return results  # type: ignore[return-value]

    # -- selection -------------------------------------------------------------------------------

    def _mipruner_select(
        self, items: list[EncodedItem], fields: dict[str, tuple[Any, Any]]
    ) -> list[torch.Tensor]:
        # Per-item parameters and query ids, in item order (one modality per batch in vLLM, but
        # nothing here relies on it).
        cursor: dict[str, int] = {}
        unbatched: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
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
            unbatched[modality] = (params_list, text_list)
        per_item: list[tuple[Any, torch.Tensor] | None] = []
        for item in items:
            if item.modality not in unbatched:
                per_item.append(None)
                continue
            params_list, text_list = unbatched[item.modality]
            i = cursor.get(item.modality, 0)
            cursor[item.modality] = i + 1
            per_item.append((decode_params(params_list[i]), text_list[i].reshape(-1).long()))

        todo = [k for k, entry in enumerate(per_item) if entry is not None and entry[0].prunes]
        kept: dict[int, torch.Tensor] = {}
        fallbacks: dict[int, str] = {}
        if todo:
            visuals, selectable_rows = [], []
            for k in todo:
                item = items[k]
                # Row bookkeeping on the host (no boolean indexing of device tensors: no sync).
                rows = torch.arange(item.embeds.shape[0])
                if item.fixed is not None:
                    rows = rows[~item.fixed.cpu()]
                rows = rows.to(item.embeds.device)
                selectable_rows.append(rows)
                visuals.append(item.embeds.index_select(0, rows)[:, : item.score_dim])
            texts = self._mipruner_embed_texts([per_item[k][1] for k in todo], visuals)  # type: ignore[index]
            params = [per_item[k][0] for k in todo]  # type: ignore[index]
            frames = [items[k].frames for k in todo]
            if self._mipruner_timer_instance is None:
                self._mipruner_timer_instance = _SelectionTimer()
            timer = self._mipruner_timer_instance
            started = timer.start(visuals[0].device)
            selection, reasons = self._mipruner_select_isolated(frames, visuals, texts, params)
            timer.stop(started, selection.label, list(selection.backends))  # what ran, per item
            selections = selection.indices
            for j, (k, rows, sel) in enumerate(zip(todo, selectable_rows, selections, strict=True)):
                item = items[k]
                chosen = rows[sel.to(rows.device)]
                if item.fixed is not None:
                    fixed_rows = item.fixed.cpu().nonzero(as_tuple=True)[0].to(rows.device)
                    chosen = torch.sort(torch.cat([chosen, fixed_rows])).values
                kept[k] = chosen
                if reasons[j] is not None:
                    fallbacks[k] = reasons[j]  # type: ignore[assignment]
            debug_dir = get_settings().debug_dir
            if debug_dir:
                path = Path(debug_dir) / "selections.jsonl"
                for j, (k, sel_params) in enumerate(zip(todo, params, strict=True)):
                    _debug_record(
                        path,
                        {
                            "pid": os.getpid(),
                            "modality": items[k].modality,
                            "n_visual": int(visuals[j].shape[0]),
                            "n_fixed": int(items[k].fixed.sum())
                            if items[k].fixed is not None
                            else 0,
                            "fixed": (
                                items[k].fixed.nonzero(as_tuple=True)[0].tolist()
                                if items[k].fixed is not None
                                else []
                            ),
                            "frames": items[k].frames,
                            "kept": kept[k].tolist(),
                            "text_ids": per_item[k][1].tolist(),  # type: ignore[index]
                            "params": request_fields(sel_params),
                            "fallback": fallbacks.get(k),
                        },
                    )

        out: list[torch.Tensor] = []
        for k, item in enumerate(items):
            emb = item.embeds if k not in kept else item.embeds.index_select(0, kept[k])
            if self.mipruner_positions_armed and item.positions is not None:
                emb = torch.cat(
                    [emb, self._mipruner_position_columns(item, kept.get(k), emb)], dim=1
                )
            out.append(emb)
        return out

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
            _warn_fallback(
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

    def _mipruner_select_isolated(
        self,
        frames: list[int],
        visuals: list[torch.Tensor],
        texts: list[torch.Tensor],
        params: list[Any],
    ) -> tuple[Selection, list[str | None]]:
        """The batched selection, with a deterministic fallback for any item that cannot be
        selected.

        An exception inside ``embed_multimodal`` kills vLLM's engine, so no data problem may
        raise here. The whole batch is tried at once (the fast path, no extra sync); if that
        fails, items with NaN/inf embeddings get the uniform stride (reason ``non_finite``), and
        the rest are retried one by one, those that still fail falling back too
        (``selection_error``). Each fallback is logged once and counted.
        """
        try:
            return self._mipruner_select_frames(frames, visuals, texts, params), [None] * len(
                visuals
            )
        except Exception as exc:  # the slow path below finds the items responsible
            batch_error = exc
        flags = torch.stack(
            [torch.isfinite(v).all()
             & (torch.isfinite(t).all() if t.numel() else v.new_ones((), dtype=torch.bool))
             for v, t in zip(visuals, texts, strict=True)]
        ).tolist()  # fmt: skip
        selections: list[torch.Tensor] = []
        backends: list[str] = []
        reasons: list[str | None] = []
        for j, (n_frames, visual, text, item_params) in enumerate(
            zip(frames, visuals, texts, params, strict=True)
        ):
            reason: str | None = None
            detail = str(batch_error)
            if not flags[j]:
                reason, detail = (
                    "non_finite",
                    "NaN or inf in the item's embeddings or query embeddings",
                )
            else:
                try:
                    single = self._mipruner_select_frames(
                        [n_frames], [visual], [text], [item_params]
                    )
                    selections.append(single.indices[0])
                    backends.append(single.backends[0])
                    reasons.append(None)
                    continue
                except Exception as exc:
                    reason, detail = "selection_error", f"{type(exc).__name__}: {exc}"
            _warn_fallback(reason, detail, int(visual.shape[0]))
            selections.append(
                uniform_fallback(int(visual.shape[0]), n_frames, item_params).to(visual.device)
            )
            backends.append("torch")  # the fallback rule runs on the host
            reasons.append(reason)
        return Selection(selections, backends), reasons  # type: ignore[arg-type]

    @staticmethod
    def _mipruner_select_frames(
        frames: list[int], visuals: list[torch.Tensor], texts: list[torch.Tensor], params: list[Any]
    ) -> Selection:
        """One batched selection for all items; an item of several frames selects per frame.

        A frame is scored against the item's query like an item of its own, with the frame's share
        of the item budget (``n_keep_per_frame``) as an absolute budget; the random baseline gets
        ``seed + frame`` so frames do not repeat one pattern. Returns each item's selected rows and
        the backend that ran it (a frame that needed no scoring does not change an item's label).
        """
        unit_visuals, unit_texts, unit_params, owners = [], [], [], []
        for j, (n_frames, visual, text, item_params) in enumerate(
            zip(frames, visuals, texts, params, strict=True)
        ):
            if n_frames == 1:
                unit_visuals.append(visual)
                unit_texts.append(text)
                unit_params.append(item_params)
                owners.append((j, 0))
                continue
            per_frame, rest = divmod(visual.shape[0], n_frames)
            if rest:
                raise ValueError(
                    f"mipruner: {visual.shape[0]} visual rows do not split into "
                    f"{n_frames} equal frames"
                )
            budgets = item_params.n_keep_per_frame(n_frames, per_frame)
            for frame, budget in enumerate(budgets):
                start = frame * per_frame
                unit_visuals.append(visual[start : start + per_frame])
                unit_texts.append(text)
                unit_params.append(
                    item_params.model_copy(
                        update={
                            "keep_ratio": None,
                            "keep_tokens": budget,
                            "seed": item_params.seed + frame,
                        }
                    )
                )
                owners.append((j, start))
        selected: list[list[torch.Tensor]] = [[] for _ in visuals]
        ran: list[str] = ["none"] * len(visuals)
        units = select_batch(unit_visuals, unit_texts, unit_params)
        for (j, start), sel, ran_on in zip(owners, units.indices, units.backends, strict=True):
            selected[j].append(sel + start)
            ran[j] = ran_on if ran_on != "none" else ran[j]
        return Selection(
            [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in selected], ran
        )  # type: ignore[arg-type]

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


__all__ = ["POSITION_COLUMNS", "BatchLayout", "EncodedItem", "MIPrunerModelMixin"]
