# SPDX-License-Identifier: Apache-2.0
"""Model side of the plugin (worker process): select each item's kept rows after the projector.

:class:`MIPrunerModelMixin` wraps a stock model's ``embed_multimodal``. A family subclass encodes
the batch exactly as stock vLLM does (vision tower + projector) and describes each item
(:class:`EncodedItem`); the mixin then, for the whole encoder batch at once:

1. embeds every item's query tokens with the LLM's own *input* embedding table
   (``get_language_model().embed_input_ids``; tensor-parallel safe), in one call;
2. calls :func:`~mipruner_vllm.pruning.select.select_batch` once for all pruned items of
   the batch (Triton kernels on CUDA, torch reference on CPU), scoring on the first
   ``score_dim`` columns (Qwen3-VL appends deepstack features after them); an item of several
   frames with fixed per-frame placeholder counts (Qwen3-VL video) is selected frame by frame in
   that same call, each frame with its share of the item budget;
3. keeps the selected rows plus the item's always-kept rows, in original order, so each item
   returns exactly ``n_keep(N_V) + n_fixed`` rows, the count the processor gave it;
4. for M-RoPE models whose runner is armed, appends the kept rows' (t, h, w) positions
   (:mod:`mipruner_vllm.integration.mrope`) for ``recompute_mrope_positions`` to strip. Every item
   carries them once the runner is armed, unpruned ones included (pitfall 9).

Items that do not prune are returned untouched, so keep_ratio = 1 is bit-identical to stock.
Selection latency goes to ``mipruner_vllm.metrics.observe_selection``; with
``MIPRUNER_DEBUG_DIR`` set, each pruned item is also appended to ``selections.jsonl`` there.
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
from mipruner_vllm.integration.fields import decode_params, params_field, text_field, unbatch
from mipruner_vllm.integration.mrope import POSITION_COLUMNS, encode_positions
from mipruner_vllm.metrics import observe_selection
from mipruner_vllm.params import request_fields
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


class MIPrunerModelMixin:
    """``embed_multimodal`` with per-item MI selection; see the module docstring."""

    #: Modalities the processor attaches pruning fields to.
    mipruner_modalities: tuple[str, ...] = ("image",)
    #: True when the runner strips position columns (set by the M-RoPE families at init).
    mipruner_positions_armed: bool = False

    def _mipruner_encode(self, **kwargs: object) -> list[EncodedItem]:
        """Encode one batch exactly as stock ``embed_multimodal`` does, one entry per item."""
        raise NotImplementedError

    def embed_multimodal(self, **kwargs: object) -> Any:
        fields: dict[str, tuple[Any, Any]] = {}
        for modality in self.mipruner_modalities:
            params = kwargs.pop(params_field(modality), None)
            texts = kwargs.pop(text_field(modality), None)
            if params is not None:
                fields[modality] = (params, texts)
        items = self._mipruner_encode(**kwargs)
        if not items:
            return []
        return self._mipruner_select(items, fields)

    def _mipruner_select(self, items: list[EncodedItem], fields: dict[str, tuple[Any, Any]]) -> list[torch.Tensor]:
        # Per-item parameters and query ids, in item order (one modality per batch in vLLM, but
        # nothing here relies on it).
        cursor: dict[str, int] = {}
        unbatched: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for modality, (params_value, texts_value) in fields.items():
            params_list = list(params_value.unbind(0)) if isinstance(params_value, torch.Tensor) else list(params_value)
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
        if todo:
            started = time.perf_counter()
            visuals, selectable_rows = [], []
            for k in todo:
                item = items[k]
                rows = torch.arange(item.embeds.shape[0], device=item.embeds.device)
                if item.fixed is not None:
                    rows = rows[~item.fixed.to(rows.device)]
                selectable_rows.append(rows)
                visuals.append(item.embeds[rows, : item.score_dim])
            texts = self._mipruner_embed_texts([per_item[k][1] for k in todo], visuals)  # type: ignore[index]
            params = [per_item[k][0] for k in todo]  # type: ignore[index]
            selection = self._mipruner_select_frames([items[k].frames for k in todo], visuals, texts, params)
            for k, rows, sel in zip(todo, selectable_rows, selection.indices, strict=True):
                item = items[k]
                chosen = rows[sel.to(rows.device)]
                if item.fixed is not None:
                    fixed_rows = item.fixed.to(rows.device).nonzero(as_tuple=True)[0]
                    chosen = torch.sort(torch.cat([chosen, fixed_rows])).values
                kept[k] = chosen
            elapsed = time.perf_counter() - started
            observe_selection(elapsed, selection.label, selection.backends)  # what ran, per item
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
                            "n_fixed": int(items[k].fixed.sum()) if items[k].fixed is not None else 0,
                            "fixed": (
                                items[k].fixed.nonzero(as_tuple=True)[0].tolist() if items[k].fixed is not None else []
                            ),
                            "frames": items[k].frames,
                            "kept": kept[k].tolist(),
                            "text_ids": per_item[k][1].tolist(),  # type: ignore[index]
                            "params": request_fields(sel_params),
                        },
                    )

        out: list[torch.Tensor] = []
        for k, item in enumerate(items):
            emb = item.embeds if k not in kept else item.embeds[kept[k]]
            if self.mipruner_positions_armed and item.positions is not None:
                pos = item.positions if k not in kept else item.positions[kept[k].to(item.positions.device)]
                emb = torch.cat([emb, encode_positions(pos, emb.dtype).to(emb.device)], dim=1)
            out.append(emb)
        return out

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
        for j, (n_frames, visual, text, item_params) in enumerate(zip(frames, visuals, texts, params, strict=True)):
            if n_frames == 1:
                unit_visuals.append(visual)
                unit_texts.append(text)
                unit_params.append(item_params)
                owners.append((j, 0))
                continue
            per_frame, rest = divmod(visual.shape[0], n_frames)
            if rest:
                raise ValueError(f"mipruner: {visual.shape[0]} visual rows do not split into {n_frames} equal frames")
            budgets = item_params.n_keep_per_frame(n_frames, per_frame)
            for frame, budget in enumerate(budgets):
                start = frame * per_frame
                unit_visuals.append(visual[start : start + per_frame])
                unit_texts.append(text)
                unit_params.append(
                    item_params.model_copy(
                        update={"keep_ratio": None, "keep_tokens": budget, "seed": item_params.seed + frame}
                    )
                )
                owners.append((j, start))
        selected: list[list[torch.Tensor]] = [[] for _ in visuals]
        ran: list[str] = ["none"] * len(visuals)
        units = select_batch(unit_visuals, unit_texts, unit_params)
        for (j, start), sel, ran_on in zip(owners, units.indices, units.backends, strict=True):
            selected[j].append(sel + start)
            ran[j] = ran_on if ran_on != "none" else ran[j]
        return Selection([parts[0] if len(parts) == 1 else torch.cat(parts) for parts in selected], ran)  # type: ignore[arg-type]

    def _mipruner_embed_texts(self, ids: list[torch.Tensor], visuals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Query embeddings from the LLM's input embedding table, one call for the batch."""
        device = visuals[0].device
        lengths = [int(t.numel()) for t in ids]
        if sum(lengths) == 0:
            return [v.new_zeros((0, v.shape[1])) for v in visuals]
        flat = torch.cat([t.to(device) for t in ids])
        embeds = self.get_language_model().embed_input_ids(flat)  # type: ignore[attr-defined]
        return [e.to(v.dtype) for e, v in zip(torch.split(embeds, lengths), visuals, strict=True)]


__all__ = ["POSITION_COLUMNS", "EncodedItem", "MIPrunerModelMixin"]
