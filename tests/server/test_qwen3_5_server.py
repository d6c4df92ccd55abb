# SPDX-License-Identifier: Apache-2.0
"""Qwen3.5 through ``mipruner-vllm serve`` and the official ``openai`` client, end to end.

The server is given the tiny Qwen3.5 demo checkpoint with ``--model`` and nothing else: the
launcher reads the architecture from its ``config.json`` and arms the pruning-aware Qwen3.5
(hybrid Gated DeltaNet / full-attention LLM, Qwen3-VL vision side). Images, a video, a repeat
from the caches, and a bad field that is refused while the server keeps serving.
"""

from __future__ import annotations

import pytest
from helpers.server import image_data_url, openai_client, video_data_url

from mipruner_vllm.params import n_keep

pytestmark = pytest.mark.server
OWN_SERVER = True  # conftest orders this module last: it replaces the shared server

SERVED = "qwen3_5-demo"
#: 128x128 px, 16-px patches merged 2x2: 4x4 = 16 visual tokens on the tiny Qwen3.5.
SIDE, N_VISUAL = 128, 16
#: 4 frames of 128 px at 2 fps: 2 temporal patches x 4 x 4 = 32 visual tokens.
N_VIDEO = 32


@pytest.fixture()
def client(server_with, demo_model_dir):
    model = str(demo_model_dir("qwen3_5"))
    server = server_with("--model", model, "--served-model-name", SERVED, name="qwen3_5")
    return openai_client(server, timeout=300)


def _messages(question: str, url: str, kind: str = "image_url") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": kind, kind: {"url": url}}, {"type": "text", "text": question}],
        }
    ]


def _chat(client, messages, **extra_body):
    return client.chat.completions.create(
        model=SERVED,
        messages=messages,
        max_tokens=3,
        temperature=0.0,
        logprobs=True,
        extra_body=extra_body or None,
    )


def test_image_budgets_follow_the_rule(client):
    messages = _messages("What is in this picture?", image_data_url(3, (SIDE, SIDE)))
    full = _chat(client, messages, keep_ratio=1.0).usage
    assert (full.visual_tokens, full.visual_tokens_kept) == (N_VISUAL, N_VISUAL)
    for budget in ({"keep_ratio": 0.25}, {"keep_ratio": 0.5}, {"keep_tokens": 3}):
        usage = _chat(client, messages, **budget).usage
        kept = n_keep(N_VISUAL, **budget)
        assert (usage.visual_tokens, usage.visual_tokens_kept) == (N_VISUAL, kept), budget
        assert usage.prompt_tokens == full.prompt_tokens - (N_VISUAL - kept), budget


def test_video_is_one_item_with_one_budget(client):
    messages = _messages(
        "What happens in the video?", video_data_url(side=SIDE, seed=2), "video_url"
    )
    full = _chat(client, messages).usage
    assert full.visual_tokens == N_VIDEO
    usage = _chat(client, messages, keep_ratio=0.25).usage
    assert (usage.visual_tokens, usage.visual_tokens_kept) == (
        N_VIDEO,
        n_keep(N_VIDEO, keep_ratio=0.25),
    )
    assert usage.prompt_tokens == full.prompt_tokens - N_VIDEO + n_keep(N_VIDEO, keep_ratio=0.25)


def test_repeat_gives_the_same_answer_and_logprobs(client):
    messages = _messages("Where is the red ball?", image_data_url(4, (SIDE, SIDE)))
    first = _chat(client, messages, keep_ratio=0.5, mi_lambda=0.5)
    second = _chat(client, messages, keep_ratio=0.5, mi_lambda=0.5)
    assert first.choices[0].message.content == second.choices[0].message.content
    lp = [[t.logprob for t in c.logprobs.content] for c in (first.choices[0], second.choices[0])]
    assert lp[0] == lp[1]
    assert first.usage.prompt_tokens == second.usage.prompt_tokens


def test_bad_field_is_400_and_the_server_keeps_serving(client):
    import openai

    messages = _messages("What is in this picture?", image_data_url(5, (SIDE, SIDE)))
    with pytest.raises(openai.BadRequestError, match="keep_ratio"):
        _chat(client, messages, keep_ratio=1.5)
    usage = _chat(client, messages, keep_ratio=0.25).usage
    assert usage.visual_tokens_kept == n_keep(N_VISUAL, keep_ratio=0.25)
