# SPDX-License-Identifier: Apache-2.0
"""The official ``openai`` client against a real server: budgets, usage, streaming, concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers.server import MODEL, N_VISUAL, image_messages, streamed_chat_chunks

from mipruner_vllm.params import n_keep

pytestmark = pytest.mark.server


def _chat(client, **extra_body):
    return client.chat.completions.create(
        model=MODEL,
        messages=image_messages(),
        max_tokens=2,
        temperature=0.0,
        extra_body=extra_body or None,
    )


@pytest.fixture()
def unpruned_prompt_tokens(client) -> int:
    usage = _chat(client, keep_ratio=1.0).usage
    assert usage.visual_tokens == N_VISUAL and usage.visual_tokens_kept == N_VISUAL
    return usage.prompt_tokens


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5, 0.25])
def test_chat_keep_ratio_usage_follows_budget_rule(client, unpruned_prompt_tokens, keep_ratio):
    response = _chat(client, keep_ratio=keep_ratio)
    kept = n_keep(N_VISUAL, keep_ratio=keep_ratio)
    assert response.usage.visual_tokens == N_VISUAL
    assert response.usage.visual_tokens_kept == kept
    # The pruned placeholders are really gone from the prompt the engine ran.
    assert response.usage.prompt_tokens == unpruned_prompt_tokens - (N_VISUAL - kept)
    assert response.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("keep_tokens,expected", [(3, 3), (1, 1), (1000, N_VISUAL)])
def test_chat_keep_tokens(client, unpruned_prompt_tokens, keep_tokens, expected):
    usage = _chat(client, keep_tokens=keep_tokens).usage
    assert (usage.visual_tokens, usage.visual_tokens_kept) == (N_VISUAL, expected)
    assert usage.prompt_tokens == unpruned_prompt_tokens - (N_VISUAL - expected)


def test_chat_other_methods_and_lambda(client, unpruned_prompt_tokens):
    for extra in (
        {"keep_ratio": 0.5, "mi_lambda": 0.5, "mi_tau": 0.2},
        {"keep_ratio": 0.25, "pruning_method": "similarity"},
        {"keep_ratio": 0.25, "pruning_method": "divprune"},
    ):
        usage = _chat(client, **extra).usage
        kept = n_keep(N_VISUAL, keep_ratio=extra["keep_ratio"])
        assert usage.visual_tokens_kept == kept, extra
        assert usage.prompt_tokens == unpruned_prompt_tokens - (N_VISUAL - kept), extra


def test_server_default_applies_without_fields(client, unpruned_prompt_tokens):
    # The session server runs with the settings' default keep_ratio (1.0): nothing pruned.
    usage = _chat(client).usage
    assert (usage.visual_tokens, usage.visual_tokens_kept) == (N_VISUAL, N_VISUAL)
    assert usage.prompt_tokens == unpruned_prompt_tokens


def test_text_only_chat_reports_zero_visual_tokens(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=2,
        extra_body={"keep_ratio": 0.5},
    )
    assert (response.usage.visual_tokens, response.usage.visual_tokens_kept) == (0, 0)


def test_streaming_final_usage_chunk(client, unpruned_prompt_tokens):
    chunks = streamed_chat_chunks(client, image_messages(), keep_ratio=0.25)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    usage = usage_chunks[0].usage
    assert (usage.visual_tokens, usage.visual_tokens_kept) == (
        N_VISUAL,
        n_keep(N_VISUAL, keep_ratio=0.25),
    )
    assert usage.prompt_tokens == unpruned_prompt_tokens - (N_VISUAL - 4)
    assert any(c.choices and c.choices[0].delta.content is not None for c in chunks)


def test_completions(client):
    response = client.completions.create(
        model=MODEL,
        prompt="The picture shows",
        max_tokens=3,
        extra_body={"keep_ratio": 0.5, "mi_lambda": 0.8},
    )
    assert response.choices[0].text is not None
    assert response.usage.completion_tokens == 3
    assert (response.usage.visual_tokens, response.usage.visual_tokens_kept) == (0, 0)


def test_completions_streaming(client):
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Hello",
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.visual_tokens == 0


def test_same_request_twice_reports_same_usage(client):
    # The second one is served from vLLM's processor and encoder caches; usage must not change.
    first = _chat(client, keep_ratio=0.5).usage
    second = _chat(client, keep_ratio=0.5).usage
    assert (first.visual_tokens, first.visual_tokens_kept, first.prompt_tokens) == (
        second.visual_tokens,
        second.visual_tokens_kept,
        second.prompt_tokens,
    )


def test_32_concurrent_requests_each_get_their_own_usage(client, unpruned_prompt_tokens):
    budgets = [{"keep_ratio": r} for r in (1.0, 0.5, 0.25, 0.125, 0.75, 0.3)] + [
        {"keep_tokens": 5},
        {"keep_tokens": 2},
    ]
    jobs = [(i, budgets[i % len(budgets)]) for i in range(32)]

    def run(job):
        i, budget = job
        # Distinct questions and images so requests differ beyond the budget.
        response = client.chat.completions.create(
            model=MODEL,
            messages=image_messages(f"Question number {i}?", seed=i % 4),
            max_tokens=2,
            temperature=0.0,
            extra_body=budget,
        )
        return budget, response.usage

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(run, jobs))
    assert len(results) == 32
    for budget, usage in results:
        expected = n_keep(N_VISUAL, **budget)
        assert usage.visual_tokens == N_VISUAL, budget
        assert usage.visual_tokens_kept == expected, (budget, usage)


def test_video_is_one_item_with_one_budget(client):
    """A video through the server: usage and the prompt follow the budget rule for the whole
    video."""
    from helpers.server import video_data_url

    def video_chat(**extra_body):
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video_data_url(seed=5)}},
                    {"type": "text", "text": "What happens in the video?"},
                ],
            }
        ]
        return client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=2, temperature=0.0, extra_body=extra_body
        ).usage

    full = video_chat(keep_ratio=1.0)
    n_v = full.visual_tokens
    assert n_v > N_VISUAL and full.visual_tokens_kept == n_v  # several frames, each >= an image
    for budget in ({"keep_ratio": 0.25}, {"keep_tokens": 5}):
        usage = video_chat(**budget)
        kept = n_keep(n_v, **budget)
        assert (usage.visual_tokens, usage.visual_tokens_kept) == (n_v, kept), budget
        assert usage.prompt_tokens == full.prompt_tokens - (n_v - kept), budget
