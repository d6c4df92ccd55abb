# SPDX-License-Identifier: Apache-2.0
"""One encoder batch of the worker, without vLLM: planning, selection, fallback and timing.

The model mixin (:mod:`mipruner_vllm.integration.models.common`) keeps only the vLLM hooks; what
it does with a batch is here, as plain functions over torch tensors:

* :class:`BatchLayout`, :func:`slice_batch`, :func:`plan_tower_calls`, :func:`plan_store_lookups`:
  which items come from the store, from an identical item of the batch, or from the tower, and in
  which tower calls (each within the unpruned tokens vLLM's memory profile covered);
* :func:`select_items`: one batched selection for every pruned item of the batch (scoring on the
  first ``score_dim`` columns, per frame for frame-wise items: :func:`select_frames`), with the
  deterministic uniform-stride fallback (:func:`uniform_fallback`) for any item that cannot be
  selected (:func:`select_with_fallback`); nothing raises for data reasons, because an exception
  in ``embed_multimodal`` stops vLLM's engine;
* :class:`SelectionTimer`: the selection latency without host syncs;
* :func:`selection_record`, :func:`append_jsonl`: the debug JSONL lines (``MIPRUNER_DEBUG_DIR``).
* :func:`detail_record`: what the worker reports for a request that asked ``pruning_detail``
  (:mod:`mipruner_vllm.detail`), with the per-token scores (:mod:`mipruner_vllm.pruning.scores`,
  computed in :func:`select_items` from the embeddings the selection used) where it also asked
  ``pruning_detail_scores``.

Nothing here imports the metrics: the caller passes what observes a latency or counts a fallback
(the worker passes :mod:`mipruner_vllm.metrics`' functions).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mipruner_vllm.detail import worker_record
from mipruner_vllm.params import PruningParams, request_fields
from mipruner_vllm.pruning.dispatch import RanOn, Selection
from mipruner_vllm.pruning.reference import uniform_stride
from mipruner_vllm.pruning.scores import TokenScores, item_scores, rounded
from mipruner_vllm.pruning.select import select_batch

logger = logging.getLogger(__name__)

__all__ = [
    "BatchLayout",
    "EncodedItem",
    "OnFallback",
    "ItemRequest",
    "ItemSelection",
    "SelectionTimer",
    "StorePlan",
    "append_jsonl",
    "detail_record",
    "plan_store_lookups",
    "plan_tower_calls",
    "select_frames",
    "select_items",
    "select_with_fallback",
    "selection_record",
    "slice_batch",
    "uniform_fallback",
]


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


@dataclasses.dataclass(frozen=True)
class ItemRequest:
    """What the request of one media item asks: its parameters and its query token ids."""

    params: PruningParams
    query_ids: torch.Tensor  # (N_T,) int64
    #: The item's pruning-detail token (:mod:`mipruner_vllm.detail`); 0: no detail asked.
    detail_token: int = 0


@dataclasses.dataclass(frozen=True)
class ItemSelection:
    """The rows one pruned item keeps, and how they were chosen."""

    kept: torch.Tensor  # output rows kept, ascending, always-kept rows included
    selected: torch.Tensor  # the same among the item's selectable rows only (0..n_visual-1)
    n_visual: int  # selectable (scored) rows
    backend: RanOn  # what ran: "triton", "torch" or "none"
    fallback: str | None  # the fallback reason, or None when the method ran
    #: The ranking scores of the selectable rows, for a request that asked
    #: ``pruning_detail_scores`` only (None: not asked).
    scores: TokenScores | None = None


# -- the batch plan ----------------------------------------------------------------------------


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
    total = -1
    if layout.flat_rows is not None:
        offset = 0
        for rows in layout.flat_rows:
            bounds.append((offset, offset + rows))
            offset += rows
        total = offset
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == total != n:
            out[key] = torch.cat([value[bounds[i][0] : bounds[i][1]] for i in indices])
        elif isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n:
            out[key] = value[torch.tensor(indices, dtype=torch.long, device=value.device)]
        elif isinstance(value, tuple) and len(value) == n:
            out[key] = tuple(value[i] for i in indices)
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in indices]
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


@dataclasses.dataclass
class StorePlan:
    """Where each item of a batch comes from (:func:`plan_store_lookups`)."""

    results: list[Any]  # the stored item, or None where the tower must run or a copy is taken
    todo: list[int]  # items the tower encodes, in batch order
    copies: list[tuple[int, int]]  # (item, earlier item of the same content in this batch)
    hits: int = 0
    misses: int = 0


def plan_store_lookups(
    keys: Sequence[bytes | None], costs: Sequence[int], get: Callable[[bytes, int], Any]
) -> StorePlan:
    """Look every keyed item up once: a stored output, an identical earlier item, or the tower.

    ``get(key, cost)`` is the store's lookup (``None`` on a miss); items without a key always go
    to the tower. An identical content seen earlier in the batch is encoded once for both.
    """
    plan = StorePlan([None] * len(keys), [], [])
    first_of: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            plan.todo.append(i)
        elif key in first_of:
            plan.copies.append((i, first_of[key]))
            plan.hits += 1
        else:
            first_of[key] = i
            plan.results[i] = get(key, costs[i])
            if plan.results[i] is not None:
                plan.hits += 1
            else:
                plan.misses += 1
                plan.todo.append(i)
    return plan


# -- selection -----------------------------------------------------------------------------------


def uniform_fallback(n_rows: int, frames: int, params: PruningParams) -> torch.Tensor:
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


def _frame_units(
    n_frames: int, visual: torch.Tensor, params: PruningParams
) -> list[tuple[int, torch.Tensor, PruningParams]]:
    """(first row, rows, parameters) of each frame of an item, with the frame's absolute budget."""
    if n_frames == 1:
        return [(0, visual, params)]
    per_frame, rest = divmod(visual.shape[0], n_frames)
    if rest:
        raise ValueError(
            f"mipruner: {visual.shape[0]} visual rows do not split into {n_frames} equal frames"
        )
    units = []
    for frame, budget in enumerate(params.n_keep_per_frame(n_frames, per_frame)):
        start = frame * per_frame
        update = {"keep_ratio": None, "keep_tokens": budget, "seed": params.seed + frame}
        units.append((start, visual[start : start + per_frame], params.model_copy(update=update)))
    return units


def select_frames(
    frames: Sequence[int],
    visuals: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    params: Sequence[PruningParams],
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
        for start, rows, unit in _frame_units(n_frames, visual, item_params):
            unit_visuals.append(rows)
            unit_texts.append(text)
            unit_params.append(unit)
            owners.append((j, start))
    selected: list[list[torch.Tensor]] = [[] for _ in visuals]
    ran: list[RanOn] = ["none"] * len(visuals)
    units = select_batch(unit_visuals, unit_texts, unit_params)
    for (j, start), sel, ran_on in zip(owners, units.indices, units.backends, strict=True):
        selected[j].append(sel + start)
        ran[j] = ran_on if ran_on != "none" else ran[j]
    return Selection([parts[0] if len(parts) == 1 else torch.cat(parts) for parts in selected], ran)


#: Counts one fallback by its reason (the worker's: ``metrics.observe_fallback``).
OnFallback = Callable[[str], None]


def _warn_fallback(reason: str, detail: str, rows: int, on_fallback: OnFallback | None) -> None:
    """One warning and one count per media item that falls back to the uniform stride."""
    logger.warning(
        "mipruner: a media item of %d rows falls back to the uniform-stride selection (%s): %s",
        rows, reason, detail,
    )  # fmt: skip
    if on_fallback is not None:
        on_fallback(reason)


def _finite_flags(visuals: Sequence[torch.Tensor], texts: Sequence[torch.Tensor]) -> list[bool]:
    """Per item: no NaN/inf in its embeddings or query embeddings (one host sync for all)."""
    return torch.stack(
        [torch.isfinite(v).all()
         & (torch.isfinite(t).all() if t.numel() else v.new_ones((), dtype=torch.bool))
         for v, t in zip(visuals, texts, strict=True)]
    ).tolist()  # fmt: skip


def select_with_fallback(
    frames: Sequence[int],
    visuals: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    params: Sequence[PruningParams],
    on_fallback: OnFallback | None = None,
) -> tuple[Selection, list[str | None]]:
    """:func:`select_frames` with a deterministic fallback for any item that cannot be selected.

    The whole batch is tried at once (the fast path, no extra sync); if that fails, items with
    NaN/inf embeddings get the uniform stride (reason ``non_finite``), and the rest are retried
    one by one, those that still fail falling back too (``selection_error``). Each fallback is
    logged once and counted (``on_fallback(reason)``). Returns the selection and each item's
    fallback reason (or None).
    """
    try:
        return select_frames(frames, visuals, texts, params), [None] * len(visuals)
    except Exception:  # the slow path below finds the items responsible and says why
        pass
    finite = _finite_flags(visuals, texts)
    selections: list[torch.Tensor] = []
    backends: list[RanOn] = []
    reasons: list[str | None] = []
    for j, (n_frames, visual, text, item_params) in enumerate(
        zip(frames, visuals, texts, params, strict=True)
    ):
        if finite[j]:
            try:
                single = select_frames([n_frames], [visual], [text], [item_params])
                selections.append(single.indices[0])
                backends.append(single.backends[0])
                reasons.append(None)
                continue
            except Exception as exc:
                reason, detail = "selection_error", f"{type(exc).__name__}: {exc}"
        else:
            reason, detail = "non_finite", "NaN or inf in the item's embeddings or query embeddings"
        _warn_fallback(reason, detail, int(visual.shape[0]), on_fallback)
        rows = int(visual.shape[0])
        selections.append(uniform_fallback(rows, n_frames, item_params).to(visual.device))
        backends.append("torch")  # the fallback rule runs on the host
        reasons.append(reason)
    return Selection(selections, backends), reasons


def selectable_rows(item: EncodedItem) -> torch.Tensor:
    """The rows of ``item`` that are scored (not always-kept), on the item's device.

    Row bookkeeping runs on the host (no boolean indexing of device tensors: no sync).
    """
    rows = torch.arange(item.embeds.shape[0])
    if item.fixed is not None:
        rows = rows[~item.fixed.cpu()]
    return rows.to(item.embeds.device)


def kept_rows(item: EncodedItem, rows: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The output rows an item keeps: the selected ones plus its always-kept rows, ascending."""
    chosen = rows[selected.to(rows.device)]
    if item.fixed is None:
        return chosen
    fixed_rows = item.fixed.cpu().nonzero(as_tuple=True)[0].to(rows.device)
    return torch.sort(torch.cat([chosen, fixed_rows])).values


def select_items(
    items: Sequence[EncodedItem],
    requests: Sequence[ItemRequest | None],
    embed_texts: Callable[[list[torch.Tensor], list[torch.Tensor]], list[torch.Tensor]],
    timer: SelectionTimer,
    on_fallback: OnFallback | None = None,
) -> dict[int, ItemSelection]:
    """Select every pruned item of one encoder batch in one call; keyed by item position.

    ``requests[k]`` is what item ``k``'s request asks (``None``: no pruning fields, e.g. a
    modality the processor does not prune); items whose parameters do not prune are left out.
    ``embed_texts(query_ids, visuals)`` returns each item's query embeddings (the LLM's input
    embedding table, in the visuals' dtype). Scores use the first ``score_dim`` columns only.
    """
    todo = [k for k, r in enumerate(requests) if r is not None and r.params.prunes]
    if not todo:
        return {}
    wanted = [requests[k] for k in todo]
    rows = [selectable_rows(items[k]) for k in todo]
    visuals = [
        items[k].embeds.index_select(0, r)[:, : items[k].score_dim]
        for k, r in zip(todo, rows, strict=True)
    ]
    texts = embed_texts([r.query_ids for r in wanted], visuals)  # type: ignore[union-attr]
    params = [r.params for r in wanted]  # type: ignore[union-attr]
    started = timer.start(visuals[0].device)
    selection, reasons = select_with_fallback(
        [items[k].frames for k in todo], visuals, texts, params, on_fallback
    )
    timer.stop(started, selection.label, list(selection.backends))  # what ran, per item
    scored = [
        _asked_scores(items[k].frames, v, t, r, reason)  # type: ignore[arg-type]
        for k, v, t, r, reason in zip(todo, visuals, texts, wanted, reasons, strict=True)
    ]
    return {
        k: ItemSelection(
            kept_rows(items[k], r, sel), sel, int(v.shape[0]), backend, reason, scores
        )
        for k, r, v, sel, backend, reason, scores in zip(
            todo, rows, visuals, selection.indices, selection.backends, reasons, scored,
            strict=True,
        )
    }  # fmt: skip


def _asked_scores(
    frames: int,
    visual: torch.Tensor,
    text: torch.Tensor,
    request: ItemRequest,
    fallback: str | None,
) -> TokenScores | None:
    """The scores of an item whose request asked ``pruning_detail_scores`` (else ``None``),
    from the very embeddings its selection used. Never raises: the engine must go on."""
    if not (request.detail_token and request.params.pruning_detail_scores):
        return None
    if fallback is not None:
        return TokenScores(None, reason=f"{fallback}: the uniform-stride fallback ran, no scores")
    try:
        return item_scores(frames, visual, text, request.params)
    except Exception as exc:  # a score is a report, never a reason to fail the batch
        logger.warning("mipruner: scores of a media item failed: %s: %s", type(exc).__name__, exc)
        return TokenScores(None, reason=f"selection_error: {type(exc).__name__}")


class SelectionTimer:
    """Selection latency without host syncs: CUDA events read once they have completed.

    On CUDA the start event is recorded on the current stream right before the selection and the
    end event right after its last kernel, so the interval covers the selection only (not the
    vision tower queued before it); the interval is observed on a later batch, when
    ``end.query()`` says it is done, instead of waiting for it. On CPU it is wall time.
    ``observe(seconds, label, backends)`` receives each interval (the worker's:
    ``metrics.observe_selection``).
    """

    def __init__(self, observe: Callable[[float, str, list[str]], None]) -> None:
        self._observe = observe
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
            self._observe(time.perf_counter() - started, label, backends)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((started, end, label, backends))

    def flush(self) -> None:
        still: list[tuple[Any, Any, str, list[str]]] = []
        for start, end, label, backends in self._pending:
            if end.query():
                self._observe(start.elapsed_time(end) / 1000.0, label, backends)
            else:
                still.append((start, end, label, backends))
        self._pending = still[-64:]  # bounded even if a stream never completes


# -- debug records -------------------------------------------------------------------------------


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; one write per line with O_APPEND, so lines of concurrent workers
    never interleave."""
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


#: The scores of an item that was not pruned: no ranking ran.
_NOT_PRUNED = {
    "values": None,
    "meaning": None,
    "reason": "nothing was dropped (keep ratio 1 or method none): no ranking ran",
}


def detail_record(item: EncodedItem, request: ItemRequest, chosen: ItemSelection | None) -> dict:
    """What the worker reports for an item whose request asked ``pruning_detail``.

    The kept indices are the selected ones among the item's prunable rows (its token grid, in the
    order the model emits it), ascending; ``None`` for an item that was not pruned (all kept).
    ``method`` is what ran: ``none`` when nothing was dropped, ``uniform_stride`` on a fallback
    (whose reason is ``fallback``), else the requested method. ``scores``, only where the request
    asked ``pruning_detail_scores``: the selection's (rounded), or why there are none.
    """
    if chosen is None:
        fixed = int(item.fixed.sum()) if item.fixed is not None else 0
        unscored = _NOT_PRUNED if request.params.pruning_detail_scores else None
        return worker_record(int(item.embeds.shape[0]) - fixed, None, "none", None, unscored)
    if chosen.fallback is not None:
        method = "uniform_stride"
    elif chosen.selected.numel() >= chosen.n_visual:
        method = "none"
    else:
        method = request.params.method
    kept = chosen.selected.tolist()
    return worker_record(chosen.n_visual, kept, method, chosen.fallback, _reported(chosen.scores))


def _reported(scores: TokenScores | None) -> dict[str, Any] | None:
    """The worker record's ``scores`` part (:func:`~mipruner_vllm.detail.worker_record`)."""
    if scores is None:
        return None
    values = rounded(scores.values) if scores.values is not None else None
    return {"values": values, "meaning": scores.meaning, "reason": scores.reason}


def selection_record(item: EncodedItem, request: ItemRequest, chosen: ItemSelection) -> dict:
    """The ``selections.jsonl`` line of one pruned item."""
    fixed = item.fixed.nonzero(as_tuple=True)[0].tolist() if item.fixed is not None else []
    return {
        "pid": os.getpid(),
        "modality": item.modality,
        "n_visual": chosen.n_visual,
        "n_fixed": len(fixed),
        "fixed": fixed,
        "frames": item.frames,
        "kept": chosen.kept.tolist(),
        "text_ids": request.query_ids.tolist(),
        "params": request_fields(request.params),
        "fallback": chosen.fallback,
    }
