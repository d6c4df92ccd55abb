# SPDX-License-Identifier: Apache-2.0
"""Pruning detail: which visual tokens a media item kept, from the worker to its own response.

The kept indices exist only in the worker process (selection runs on the projector output),
the response is assembled in an API-server process, and vLLM V1 puts an engine-core process
between the two whose outputs carry no per-item payload. So the detail travels beside vLLM,
keyed by a secret the API server chose:

1. The processor (API-server process) gives every media item of a request that asks
   ``pruning_detail`` a fresh random token (:func:`new_token`, 62 bits from :mod:`secrets`)
   and records it with the item's outcome (:mod:`mipruner_vllm.outcome`, a per-request
   ``contextvars`` scope). The token travels to the worker in the item's params vector (the
   ``pruning_detail`` slot) and is part of the item's multimodal hash, so no cache (processor,
   encoder, prefix) can serve the item without the worker selecting it again.
2. The worker of tensor-parallel rank 0, right after selecting the item (store hits and
   fallbacks included), writes what it used to ``<dir>/<token>.json`` (:func:`write_item`):
   atomically (a temporary name, then ``os.replace``), mode 0600, in a 0700 directory.
3. The API server, when it adds ``usage`` to the response, reads and deletes the files of its
   own tokens (:func:`take_item`). The encoder runs before the first output token of a request
   exists, so the file is there by then. When the request ends, every file of its tokens is
   deleted whether or not it was read (:func:`discard`); files of aborted requests that a worker
   wrote late, or of offline ``LLM`` use where no API server reads them, are removed by
   :func:`sweep` (older than :data:`STALE_SECONDS`), which both sides run now and then.

A request that also asks ``pruning_detail_scores`` gets, per item, the score its method ranked
the tokens by (:mod:`mipruner_vllm.pruning.scores`), written by the worker in the same file and
counted toward the same response bound (:data:`MAX_RESPONSE_INDICES`).

Any API-server process and any data-parallel engine on the host use the same directory
(``MIPRUNER_DETAIL_DIR``, default ``/dev/shm/mipruner-detail-<uid>``: memory, not disk). A
request that does not ask for the detail never touches it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from mipruner_vllm.config import get_settings

#: Most values (kept indices and, where asked, scores) one response carries over all its items;
#: an item past the bound gets ``"kept": null`` and ``"omitted"`` saying why, or, when only its
#: scores do not fit, ``"scores": null`` and ``"scores_omitted"`` (docs/kept-patches.md).
MAX_RESPONSE_INDICES = 1 << 16
#: Detail files older than this belong to requests that ended without reading them.
STALE_SECONDS = 120.0

__all__ = [
    "MAX_RESPONSE_INDICES",
    "STALE_SECONDS",
    "detail_dir",
    "discard",
    "item_entry",
    "new_token",
    "sweep",
    "sweep_now_and_then",
    "take_item",
    "worker_record",
    "write_item",
]


def detail_dir() -> Path:
    """The directory shared by the server's API-server and worker processes (created 0700)."""
    configured = get_settings().detail_dir
    if configured:
        path = Path(configured)
    else:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        path = base / f"mipruner-detail-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def new_token() -> int:
    """A fresh, unguessable item token: positive, non-zero, fits the int64 params slot."""
    return secrets.randbits(62) | 1


def _path(token: int) -> Path:
    return detail_dir() / f"{token:016x}.json"


def write_item(token: int, record: dict[str, Any]) -> None:
    """Worker side: publish one item's detail (atomic; never raises: the engine must go on)."""
    temporary: str | None = None
    try:
        directory = detail_dir()
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as handle:  # mkstemp creates the file 0600
            json.dump(record, handle, separators=(",", ":"))
        os.replace(temporary, directory / f"{token:016x}.json")
    except OSError:  # no detail for this item: the response says it was not reported
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def take_item(token: int) -> dict[str, Any] | None:
    """API-server side: read one item's detail and delete it (``None``: not reported)."""
    path = _path(token)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    with contextlib.suppress(OSError):
        path.unlink()
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def discard(tokens: list[int]) -> None:
    """Delete whatever is left of these tokens' files (the request has ended)."""
    for token in tokens:
        with contextlib.suppress(OSError):
            _path(token).unlink()


def sweep(now: float | None = None) -> int:
    """Delete detail files older than :data:`STALE_SECONDS`; returns how many went."""
    now = time.time() if now is None else now
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(detail_dir()):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > STALE_SECONDS:
                    os.unlink(entry.path)
                    removed += 1
    return removed


_last_sweep = 0.0


def sweep_now_and_then(every: float = STALE_SECONDS / 2) -> None:
    """:func:`sweep` at most once per ``every`` seconds (the worker calls it after writing, so
    files nobody reads, from offline ``LLM`` use say, do not pile up)."""
    global _last_sweep
    now = time.time()
    if now - _last_sweep >= every:
        _last_sweep = now
        sweep(now)


def worker_record(
    n_visual: int,
    kept: list[int] | None,
    method: str,
    fallback: str | None,
    scores: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the worker writes for one item: ``kept`` ``None`` means every token (not pruned).

    ``scores``, only for a request that asked ``pruning_detail_scores``: ``{"values": [...] or
    None, "meaning": what they are, "reason": why values is None}``.
    """
    record = {"n_visual": n_visual, "kept": kept, "method": method, "fallback": fallback}
    if scores is not None:
        record["scores"] = scores
    return record


def item_entry(
    modality: str,
    n_visual: int,
    n_kept: int,
    grid: tuple[int, int, int] | None,
    record: dict[str, Any] | None,
    budget: int,
    scores: bool = False,
) -> tuple[dict[str, Any], int]:
    """One item of ``usage.pruning_detail`` and the values it used of the response's budget.

    ``record`` is the worker's (:func:`worker_record`), or ``None`` when none was found; the
    indices are the worker's, never recomputed here. An item whose indices would pass the
    response's remaining ``budget`` gets ``"kept": null`` and ``"omitted"`` saying why.
    ``scores``: the request asked ``pruning_detail_scores`` (:func:`_add_scores`).
    """
    entry: dict[str, Any] = {
        "modality": modality,
        "grid": list(grid) if grid is not None else None,
        "visual_tokens": n_visual,
        "visual_tokens_kept": n_kept,
        "method": None,
        "fallback": None,
        "kept": None,
    }
    used = _add_kept(entry, record, n_visual, n_kept, budget)
    if scores:
        used += _add_scores(entry, record, n_visual, budget - used)
    return entry, used


def _add_scores(
    entry: dict[str, Any], record: dict[str, Any] | None, n_visual: int, budget: int
) -> int:
    """Add ``scores`` (one per visual token, row-major like ``kept``) and ``score`` (what they
    are), or ``"scores": null`` and ``scores_omitted`` saying why, to ``entry``; returns how many
    values of the response's bound they used (they count like the indices, which come first)."""
    reported = (record or {}).get("scores")
    values = reported.get("values") if isinstance(reported, dict) else None
    entry["score"], entry["scores"] = None, None
    if not isinstance(reported, dict):
        entry["scores_omitted"] = "not reported by the worker"
    elif values is None:
        entry["scores_omitted"] = str(reported.get("reason") or "not reported by the worker")
    elif len(values) != n_visual:
        entry["scores_omitted"] = f"the worker reported {len(values)} scores for {n_visual} tokens"
    elif len(values) > budget:
        entry["scores_omitted"] = (
            f"over the bound of {MAX_RESPONSE_INDICES} kept indices and scores per response"
        )
    else:
        entry["score"], entry["scores"] = reported.get("meaning"), values
        return len(values)
    return 0


def _add_kept(
    entry: dict[str, Any], record: dict[str, Any] | None, n_visual: int, n_kept: int, budget: int
) -> int:
    """Add the worker's ``method``, ``fallback`` and ``kept`` to ``entry``, or ``omitted`` saying
    why ``kept`` stays null; returns how many indices of the response's bound it used."""
    if record is None:
        entry["omitted"] = "not reported by the worker"
        return 0
    entry["method"], entry["fallback"] = record.get("method"), record.get("fallback")
    kept = record.get("kept")
    if kept is None:
        kept = list(range(int(record.get("n_visual", n_visual))))
    if record.get("n_visual") != n_visual or len(kept) != n_kept:
        entry["omitted"] = (
            f"the worker reported {len(kept)} of {record.get('n_visual')} tokens, "
            f"the prompt placed {n_kept} of {n_visual}"
        )
        return 0
    if len(kept) > budget:
        entry["omitted"] = f"over the bound of {MAX_RESPONSE_INDICES} kept indices per response"
        return 0
    entry["kept"] = kept
    return len(kept)
