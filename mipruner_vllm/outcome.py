# SPDX-License-Identifier: Apache-2.0
"""The pruning outcome of one request, handed from the vLLM processor to whoever asked.

The multimodal processor (API-server process) knows, per media item, how many visual tokens the
item had (N_V) and how many are kept (N_keep). The server wants those numbers in the response's
``usage``; the metrics want them as counters. The processor calls :func:`record_item` once per
item; a caller that wants the numbers of its own request wraps the request in :func:`collect`
(a ``contextvars`` scope, so concurrent requests never see each other's items).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ItemOutcome:
    modality: str
    n_visual: int
    n_kept: int
    method: str


@dataclass
class RequestOutcome:
    items: list[ItemOutcome] = field(default_factory=list)

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


def record_item(modality: str, n_visual: int, n_kept: int, method: str) -> None:
    """Called by the processor once per media item of a request."""
    outcome = _current.get()
    if outcome is not None:
        outcome.items.append(ItemOutcome(modality, n_visual, n_kept, method))
