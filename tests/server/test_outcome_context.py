# SPDX-License-Identifier: Apache-2.0
"""Why :func:`mipruner_vllm.server.hooks.ensure_outcome_context` exists, shown on vLLM's own
``make_async``: the renderer runs the processor through ``loop.run_in_executor``, which does not
carry contextvars into its thread, so ``record_item`` there would miss the request's collector."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from mipruner_vllm.outcome import collect, record_item
from mipruner_vllm.server.hooks import ensure_outcome_context

pytestmark = pytest.mark.server


class FakeRenderer:
    """The two attributes of vLLM's BaseRenderer that the hook touches, built the same way."""

    def __init__(self) -> None:
        from vllm.utils.async_utils import make_async

        self._mm_executor = ThreadPoolExecutor(max_workers=1)
        self._process_multimodal_async = make_async(
            self._process_multimodal, executor=self._mm_executor
        )

    def _process_multimodal(self, n_visual: int, n_kept: int) -> str:
        record_item("image", n_visual, n_kept, "mi")  # what the plugin's processor does
        return threading.current_thread().name


def _app(renderer: FakeRenderer) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(engine_client=SimpleNamespace(renderer=renderer)))


async def _request(renderer: FakeRenderer, n_visual: int, n_kept: int):
    with collect() as outcome:
        await asyncio.sleep(0)  # interleave the concurrent requests
        thread = await renderer._process_multimodal_async(n_visual, n_kept)
    return outcome, thread


def test_stock_executor_path_loses_the_records():
    renderer = FakeRenderer()
    outcome, thread = asyncio.run(_request(renderer, 16, 4))
    assert thread != threading.current_thread().name
    assert outcome.items == []  # the reason for the hook


def test_hook_delivers_each_request_its_own_records():
    renderer = FakeRenderer()
    ensure_outcome_context(_app(renderer))
    ensure_outcome_context(_app(renderer))  # idempotent

    async def main():
        return await asyncio.gather(*(_request(renderer, 16, k) for k in range(1, 17)))

    results = asyncio.run(main())
    for k, (outcome, thread) in enumerate(results, start=1):
        assert thread != threading.current_thread().name  # still on vLLM's executor thread
        assert [(i.n_visual, i.n_kept) for i in outcome.items] == [(16, k)]
