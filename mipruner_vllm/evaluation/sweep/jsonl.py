# SPDX-License-Identifier: Apache-2.0
"""JSONL runs: every item sent with the official openai client (streamed, so TTFT is measured
per request), scored against its answers."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipruner_vllm.evaluation.client import PruningClient, usage_value
from mipruner_vllm.evaluation.data import Item, is_correct
from mipruner_vllm.evaluation.sweep.rows import SweepRow, make_row, rounded
from mipruner_vllm.evaluation.sweep.serverside import server_ttft_mean, server_ttft_totals
from mipruner_vllm.evaluation.sweep.settings import Setting, item_fields

__all__ = ["run_jsonl_setting", "warm_up"]


@dataclass
class _Answer:
    item: Item
    text: str | None = None
    error: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    visual_tokens: int | None = None
    visual_tokens_kept: int | None = None
    prompt_tokens: int | None = None


def _ask(client: PruningClient, model: str, item: Item, max_tokens: int) -> _Answer:
    content = [{"type": "image_url", "image_url": {"url": url}} for url in item.images]
    content.append({"type": "text", "text": item.question})
    answer = _Answer(item)
    started = time.perf_counter()
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        usage = None
        for chunk in stream:
            if chunk.choices:
                if answer.ttft_s is None:
                    answer.ttft_s = time.perf_counter() - started
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        answer.latency_s = time.perf_counter() - started
        answer.text = "".join(parts)
        answer.visual_tokens = usage_value(usage, "visual_tokens")
        answer.visual_tokens_kept = usage_value(usage, "visual_tokens_kept")
        answer.prompt_tokens = usage_value(usage, "prompt_tokens")
    except Exception as exc:  # every failure is counted and reported, none is scored
        answer.error = f"{type(exc).__name__}: {exc}"[:500]
    return answer


def warm_up(client: Any, model: str) -> str | None:
    """One request not counted anywhere, so the first run does not pay the server's first-request
    costs. Its image is random (seeded) and in no dataset, so no run gets a cache hit from it.
    Returns the error text if it failed (the runs then show their own errors)."""
    import base64
    import io
    import random

    from PIL import Image

    rng = random.Random(0)
    image = Image.frombytes(
        "RGB", (112, 112), bytes(rng.randrange(256) for _ in range(112 * 112 * 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    try:
        client.chat.completions.create(
            model=model,
            max_tokens=1,
            temperature=0.0,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "warm-up"},
                    ],
                }
            ],
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _ask_all(
    client: Any,
    model: str,
    items: Sequence[Item],
    setting: Setting,
    *,
    max_tokens: int,
    concurrency: int,
    progress: bool,
) -> list[_Answer]:
    """Every item once, ``concurrency`` in flight; answers in item order."""
    from tqdm import tqdm

    answers: list[_Answer] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [
            pool.submit(
                _ask,
                PruningClient(client, item_fields(setting.fields, item.id)),
                model,
                item,
                max_tokens,
            )
            for item in items
        ]
        bar = tqdm(
            total=len(futures), desc=setting.label, unit="item", disable=not progress, leave=True
        )
        for future in futures:
            answers.append(future.result())
            bar.update(1)
        bar.close()
    return answers


def _write_samples(answers: Sequence[_Answer], path: Path, match: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for a in answers:
            ok = a.error is None
            sample = {
                "id": a.item.id,
                "question": a.item.question,
                "answers": list(a.item.answers),
                "prediction": a.text,
                "correct": is_correct(a.text, a.item.answers, match) if ok else None,
                "error": a.error,
                "visual_tokens": a.visual_tokens,
                "visual_tokens_kept": a.visual_tokens_kept,
                "prompt_tokens": a.prompt_tokens,
                "ttft_s": rounded(a.ttft_s),
                "latency_s": rounded(a.latency_s),
            }
            out.write(json.dumps(sample) + "\n")


def _status(answers: Sequence[_Answer], allow_failed: float) -> tuple[str, str]:
    """``(status, error)`` of a run: failed unless (nearly) every request succeeded and every
    response reported the visual tokens it kept."""
    done = [a for a in answers if a.error is None]
    errors = [a.error for a in answers if a.error]
    failed = len(answers) - len(done)
    if not done or failed > allow_failed * len(answers):
        return "failed", errors[0] if errors else ""
    if any(a.visual_tokens_kept is None or a.visual_tokens is None for a in done):
        missing = sum(a.visual_tokens_kept is None or a.visual_tokens is None for a in done)
        return "failed", (
            f"{missing} responses had no usage.visual_tokens_kept: the endpoint is not "
            "mipruner-vllm serve, so the setting was probably not applied"
        )
    return ("partial" if failed else "ok"), errors[0] if errors else ""


def run_jsonl_setting(
    client: Any,
    model: str,
    items: Sequence[Item],
    setting: Setting,
    *,
    dataset: str,
    run_dir: Path,
    root_url: str,
    max_tokens: int,
    concurrency: int,
    match: str,
    allow_failed: float,
    progress: bool = True,
) -> SweepRow:
    """Run one setting over ``items`` and score it (``runs/.../samples.jsonl`` per item)."""
    before = server_ttft_totals(root_url)
    started = time.perf_counter()
    answers = _ask_all(
        client,
        model,
        items,
        setting,
        max_tokens=max_tokens,
        concurrency=concurrency,
        progress=progress,
    )
    wall = time.perf_counter() - started
    after = server_ttft_totals(root_url)
    _write_samples(answers, run_dir / "samples.jsonl", match)
    status, error = _status(answers, allow_failed)
    done = [a for a in answers if a.error is None]
    scored = status != "failed"
    ttfts = [a.ttft_s for a in done if a.ttft_s is not None]
    return make_row(
        setting,
        dataset=dataset,
        status=status,
        items=len(answers),
        failed=len(answers) - len(done),
        model=model,
        accuracy=(sum(is_correct(a.text or "", a.item.answers, match) for a in done) / len(done))
        if scored
        else None,
        metric=f"{match}_match",
        visual=sum(a.visual_tokens or 0 for a in done) if scored else None,
        kept=sum(a.visual_tokens_kept or 0 for a in done) if scored else None,
        prompt_mean=statistics.fmean(a.prompt_tokens or 0 for a in done) if scored else None,
        ttft_p50=statistics.median(ttfts) if scored and ttfts else None,
        ttft_mean=statistics.fmean(ttfts) if scored and ttfts else None,
        latency_p50=statistics.median(a.latency_s for a in done) if scored else None,
        server_ttft=server_ttft_mean(before, after) if scored else None,
        wall=wall,
        error=error,
    )
