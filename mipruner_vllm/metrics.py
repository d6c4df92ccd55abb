# SPDX-License-Identifier: Apache-2.0
"""Every Prometheus metric of mipruner-vllm, defined once, here.

Names follow Prometheus' conventions (``mipruner_`` prefix, underscores, unit suffixes; no colons,
which are reserved for recording rules). Labels are bounded: ``model`` (the served model name the
request used), ``method`` (one of the pruning methods), ``modality`` (``image`` / ``video``),
``backend`` (what ran: ``torch`` / ``triton``, ``mixed`` / ``none`` for a batch, ``none`` for an
item that needed no scores), ``reason`` (one of :data:`FALLBACK_REASONS`) and ``engine`` (the
data-parallel engine of an encoder store, as on vLLM's series); never request ids.

Two kinds of process update them:

* the API server (one or several), once per finished request, from the request's pruning outcome
  (:func:`record_request`): visual tokens in / kept / saved, pruned requests, keep-ratio;
* vLLM's worker processes, where the selection runs (:func:`observe_selection`): selection latency
  and the backend that ran; the encoder-output store (:func:`observe_encoder_store`: hits,
  misses, evictions, bytes held) and selection fallbacks (:func:`observe_fallback`).

Worker values reach ``/metrics`` only through prometheus_client's multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` must be set before any process imports prometheus_client, which the
``mipruner-vllm serve`` launcher does. vLLM's ``/metrics`` then reads every process's files through
``MultiProcessCollector`` (``vllm.v1.metrics.prometheus.get_prometheus_registry``). Without that
variable the API-server metrics still show up (default registry) and worker metrics stay local.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:  # pragma: no cover
    from mipruner_vllm.outcome import RequestOutcome

#: Keep-ratio buckets: the common budgets (1/8, 1/4, 1/2...) fall exactly on a bucket edge.
KEEP_RATIO_BUCKETS = (0.05, 0.1, 0.125, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
#: Selection latency buckets, per encoder batch: ~50 us (small item, Triton) to seconds
#: (CPU, video).
SELECTION_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

VISUAL_TOKENS = Counter(
    "mipruner_visual_tokens",
    "Visual tokens of the media items in finished requests, before pruning (N_V).",
    ["model", "method", "modality"],
)
VISUAL_TOKENS_KEPT = Counter(
    "mipruner_visual_tokens_kept",
    "Visual tokens kept and sent to LLM prefill (N_keep).",
    ["model", "method", "modality"],
)
VISUAL_TOKENS_SAVED = Counter(
    "mipruner_visual_tokens_saved",
    "Visual tokens pruned away before LLM prefill (N_V - N_keep).",
    ["model", "method", "modality"],
)
PRUNED_REQUESTS = Counter(
    "mipruner_pruned_requests",
    "Finished requests in which at least one media item lost visual tokens.",
    ["model", "method"],
)
KEEP_RATIO = Histogram(
    "mipruner_keep_ratio",
    "Realised keep ratio N_keep / N_V, one observation per media item.",
    ["model", "method", "modality"],
    buckets=KEEP_RATIO_BUCKETS,
)
SELECTION_SECONDS = Histogram(
    "mipruner_selection_seconds",
    "Wall time of one batched token selection in the worker (all items of one encoder batch).",
    ["backend"],
    buckets=SELECTION_BUCKETS,
)
SELECTED_ITEMS = Counter(
    "mipruner_selected_items",
    "Media items that went through a token selection in the worker.",
    ["backend"],
)
# "max" across processes: every worker that ran a backend reports 1 for it, and a dead worker's
# file still says which backend it used (a fresh multiprocess directory per server run).
BACKEND_INFO = Gauge(
    "mipruner_backend_info",
    "1 for each selection backend (torch / triton) that has run in this server.",
    ["backend"],
    multiprocess_mode="max",
)


def observe_selection(seconds: float, label: str, backends: Sequence[str]) -> None:
    """Record one batched selection; called by the plugin in the worker, where it ran.

    ``backends`` says what produced each item (``triton``, ``torch``, or ``none`` when no scoring
    was needed), as reported by the dispatcher; ``label`` is the batch's (``mixed`` when both
    backends ran in it).
    """
    SELECTION_SECONDS.labels(backend=label).observe(seconds)
    for backend, count in collections.Counter(backends).items():
        SELECTED_ITEMS.labels(backend=backend).inc(count)
        if backend != "none":
            BACKEND_INFO.labels(backend=backend).set(1)


def record_request(model: str, outcome: RequestOutcome) -> None:
    """Count the media items of one finished request (API-server side)."""
    pruned_methods: set[str] = set()
    for item in outcome.items:
        labels = {"model": model, "method": item.method, "modality": item.modality}
        VISUAL_TOKENS.labels(**labels).inc(item.n_visual)
        VISUAL_TOKENS_KEPT.labels(**labels).inc(item.n_kept)
        VISUAL_TOKENS_SAVED.labels(**labels).inc(item.n_visual - item.n_kept)
        if item.n_visual > 0:
            KEEP_RATIO.labels(**labels).observe(item.n_kept / item.n_visual)
        if item.n_kept < item.n_visual:
            pruned_methods.add(item.method)
    for method in sorted(pruned_methods):
        PRUNED_REQUESTS.labels(model=model, method=method).inc()


# -- encoder-output store and failure isolation (worker side) ------------------------------------
# Recorded by the first tensor-parallel rank only: every rank holds the same store and sees the
# same hits, so counting on each rank would multiply them by the TP size. Each data-parallel engine
# has a store of its own, so the store series carry ``engine``: the engine's data-parallel index,
# the value vLLM's own ``vllm:*`` series carry under the same label name (``0`` without data
# parallelism). Dashboards sum over it; a per-engine view (is one engine's store full?) keeps it.

#: The data-parallel engine this worker process serves; set by :func:`bind_engine`.
_engine = "0"


def bind_engine() -> str:
    """Remember which data-parallel engine this process belongs to, and return it.

    Called when an encoder store is built, which happens while vLLM builds the model inside its
    config context (``set_current_vllm_config``); the engine core sets the config's
    ``data_parallel_index`` before it starts its workers. Outside that context (unit tests, a
    store built at import time) nothing changes. One worker process serves one engine.
    """
    global _engine
    try:
        from vllm.config import get_current_vllm_config_or_none
    except ImportError:  # the pruning core and its tests run without vLLM
        return _engine
    config = get_current_vllm_config_or_none()
    if config is not None:
        _engine = str(int(config.parallel_config.data_parallel_index))
        # Series without a modality exist from the start (0 evictions, an empty store), as they
        # did before they had a label: a dashboard panel on them shows data before any eviction.
        ENCODER_STORE_EVICTIONS.labels(engine=_engine)
        ENCODER_STORE_BYTES.labels(engine=_engine).set(0)
    return _engine


ENCODER_STORE_HITS = Counter(
    "mipruner_encoder_store_hits",
    "Media items whose unpruned encoder output came from the store (or from an identical item of "
    "the same encoder batch): the vision tower did not run for them.",
    ["engine", "modality"],
)
ENCODER_STORE_MISSES = Counter(
    "mipruner_encoder_store_misses",
    "Media items with a content key that the store did not hold: the vision tower ran for them.",
    ["engine", "modality"],
)
ENCODER_STORE_EVICTIONS = Counter(
    "mipruner_encoder_store_evictions",
    "Entries dropped from the encoder-output store to stay under its byte budget (LRU).",
    ["engine"],
)
# "livesum": the bytes held by the live engine's store (one process per engine sets it: its first
# tensor-parallel rank).
ENCODER_STORE_BYTES = Gauge(
    "mipruner_encoder_store_bytes",
    "Bytes of unpruned encoder outputs held in one engine's store (one tensor-parallel rank).",
    ["engine"],
    multiprocess_mode="livesum",
)
#: Reasons a worker-side selection fell back to the uniform-stride rule (a bounded label set).
FALLBACK_REASONS = ("non_finite", "selection_error", "position_overflow", "layout")
SELECTION_FALLBACKS = Counter(
    "mipruner_selection_fallbacks",
    "Media items whose selection fell back to the deterministic uniform-stride rule, by reason "
    "(non_finite: NaN/inf embeddings; selection_error: the item could not be selected; "
    "position_overflow: a kept position too large to carry; layout: unexpected row layout).",
    ["reason"],
)


def observe_encoder_store(
    modality: str, hits: int, misses: int, evictions: int, nbytes: int
) -> None:
    """Record what one encoder batch did to the store (worker, first TP rank), under the
    process's engine (:func:`bind_engine`)."""
    if hits:
        ENCODER_STORE_HITS.labels(engine=_engine, modality=modality).inc(hits)
    if misses:
        ENCODER_STORE_MISSES.labels(engine=_engine, modality=modality).inc(misses)
    if evictions:
        ENCODER_STORE_EVICTIONS.labels(engine=_engine).inc(evictions)
    ENCODER_STORE_BYTES.labels(engine=_engine).set(nbytes)


def observe_fallback(reason: str) -> None:
    """Count one media item that fell back to the uniform-stride rule."""
    # Called on the path that must never raise: an unknown reason is counted as a selection error.
    SELECTION_FALLBACKS.labels(
        reason=reason if reason in FALLBACK_REASONS else "selection_error"
    ).inc()
