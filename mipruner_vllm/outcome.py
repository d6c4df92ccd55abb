# SPDX-License-Identifier: Apache-2.0
"""The pruning outcome of one request, handed from the vLLM processor to whoever asked.

The multimodal processor (API-server process) knows, per media item, how many visual tokens the
item had (N_V) and how many are kept (N_keep). The server wants those numbers in the response's
``usage``; the metrics want them as counters. The processor calls :func:`record_item` once per
item; a caller that wants the numbers of its own request wraps the request in :func:`collect`
(a ``contextvars`` scope, so concurrent requests never see each other's items).

An item of a request that asks ``pruning_detail`` also carries its detail token and token grid;
:meth:`RequestOutcome.pruning_detail` turns them into the response's ``usage.pruning_detail``
from what the worker reported (:mod:`mipruner_vllm.detail`), once per request.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mipruner_vllm import detail


@dataclass(frozen=True)
class ItemOutcome:
    modality: str
    n_visual: int
    n_kept: int
    method: str
    #: The item's detail token (:func:`mipruner_vllm.detail.new_token`); 0: no detail asked.
    detail_token: int = 0
    #: (t, h, w) of the item's visual tokens in LLM tokens (after the spatial merge).
    grid: tuple[int, int, int] | None = None
    #: The request also asked the per-token scores (``pruning_detail_scores``).
    detail_scores: bool = False


@dataclass
class RequestOutcome:
    items: list[ItemOutcome] = field(default_factory=list)
    #: The request asked ``pruning_detail`` (set by the caller that knows the request): it then
    #: gets a list, empty when the request has no media item.
    detail_asked: bool = False
    _detail: list[dict[str, Any]] | None = None

    @property
    def detail_tokens(self) -> list[int]:
        return [item.detail_token for item in self.items if item.detail_token]

    def pruning_detail(self) -> list[dict[str, Any]] | None:
        """``usage.pruning_detail``: per item in prompt order, what the worker kept.

        ``None`` when the request did not ask; ``[]`` when it asked and has no media item. Read
        once (the worker's files are deleted as they are read) and kept on this object only for
        the rest of the response.
        """
        if not self.detail_asked and not self.detail_tokens:
            return None
        if self._detail is None:
            detail.sweep()
            budget = detail.MAX_RESPONSE_INDICES
            self._detail = []
            for item in self.items:
                entry, used = detail.item_entry(
                    item.modality,
                    item.n_visual,
                    item.n_kept,
                    item.grid,
                    detail.take_item(item.detail_token) if item.detail_token else None,
                    budget,
                    scores=item.detail_scores,
                )
                budget -= used
                self._detail.append(entry)
        return self._detail

    def discard_detail(self) -> None:
        """The request has ended: no file of its items may outlive it."""
        detail.discard(self.detail_tokens)

    @property
    def visual_tokens(self) -> int:
        return sum(item.n_visual for item in self.items)

    @property
    def visual_tokens_kept(self) -> int:
        return sum(item.n_kept for item in self.items)


_current: contextvars.ContextVar[RequestOutcome | None] = contextvars.ContextVar(
    "mipruner_request_outcome", default=None
)


@contextlib.contextmanager
def collect() -> Iterator[RequestOutcome]:
    """Collect the items recorded while the block runs (in this context) into one outcome."""
    outcome = RequestOutcome()
    token = _current.set(outcome)
    try:
        yield outcome
    finally:
        _current.reset(token)


def record_item(
    modality: str,
    n_visual: int,
    n_kept: int,
    method: str,
    *,
    detail_token: int = 0,
    grid: tuple[int, int, int] | None = None,
    detail_scores: bool = False,
) -> None:
    """Called by the processor once per media item of a request."""
    outcome = _current.get()
    if outcome is not None:
        outcome.items.append(
            ItemOutcome(modality, n_visual, n_kept, method, detail_token, grid, detail_scores)
        )
