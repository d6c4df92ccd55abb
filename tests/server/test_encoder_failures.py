# SPDX-License-Identifier: Apache-2.0
"""A checkpoint whose vision merger emits NaN never takes the server down (issue 11).

The tiny Qwen2.5-VL demo checkpoint is copied and its merger's output bias set to NaN, as an
fp16 overflow would do on a real checkpoint: every image embedding is NaN. Stock vLLM serves such
a model (the answers are meaningless); before failure isolation the first pruned image request
killed the engine. Now the selection falls back to the uniform stride for each such item (one
warning, ``mipruner_selection_fallbacks_total{reason="non_finite"}``), the requests answer, and
text requests and ``/health`` keep working. Follow-up questions about the same image reuse the
stored encoder output (``mipruner_encoder_store_hits_total``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from helpers.server import N_VISUAL, image_messages, sample, scrape, total

from mipruner_vllm.params import n_keep

pytestmark = pytest.mark.server
OWN_SERVER = True  # conftest orders this module last: it replaces the shared server

SERVED = "nan-merger"


def _poisoned_checkpoint(source: Path, out: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out)
    weights = load_file(out / "model.safetensors")
    bias = "visual.merger.mlp.2.bias"
    weights[bias] = torch.full_like(weights[bias], float("nan"))
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def nan_server(server_with, demo_model_dir, tmp_path_factory):
    checkpoint = _poisoned_checkpoint(
        demo_model_dir("qwen2_5_vl"), tmp_path_factory.mktemp("nan") / "ckpt"
    )
    return server_with(
        "--model", str(checkpoint), "--served-model-name", SERVED, "--max-num-seqs", "8", name="nan"
    )


def _chat(server, messages, **fields):
    body = {"model": SERVED, "messages": messages, "max_tokens": 2, "temperature": 0.0, **fields}
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=300)


def test_nan_embeddings_fall_back_and_the_server_keeps_serving(nan_server):
    before = scrape(nan_server.base_url)
    questions = ["What is in this picture?", "Where is the brightest spot?"]
    for question in questions:
        response = _chat(nan_server, image_messages(question, seed=3), keep_ratio=0.25)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        assert usage["visual_tokens_kept"] == n_keep(N_VISUAL, keep_ratio=0.25)
    after = scrape(nan_server.base_url)
    fallbacks = sample(after, "mipruner_selection_fallbacks_total", reason="non_finite") - sample(
        before, "mipruner_selection_fallbacks_total", reason="non_finite"
    )
    assert fallbacks == len(questions)  # one per pruned item, each selected for its own question
    # The second question about the same image did not run the tower again.
    hits = total(after, "mipruner_encoder_store_hits_total") - total(
        before, "mipruner_encoder_store_hits_total"
    )
    assert hits >= 1
    assert total(after, "mipruner_encoder_store_bytes") > 0

    # Nothing else is affected: a text request, an unpruned image request, and /health.
    text = _chat(nan_server, [{"role": "user", "content": "Say hello."}])
    assert text.status_code == 200, text.text
    assert text.json()["choices"][0]["message"] is not None
    unpruned = _chat(nan_server, image_messages("What is this?", seed=4))
    assert unpruned.status_code == 200, unpruned.text
    assert httpx.get(nan_server.base_url + "/health", timeout=30).status_code == 200
    assert nan_server.process.poll() is None
    assert "falls back to the uniform-stride selection (non_finite)" in nan_server.log.read_text(
        errors="replace"
    )


def test_pruning_detail_reports_the_fallback_the_worker_used(nan_server):
    """The detail of a fallen-back item is the uniform stride the worker kept, with its reason."""
    from mipruner_vllm.params import resolve_params
    from mipruner_vllm.pruning.encoder_batch import uniform_fallback

    response = _chat(
        nan_server, image_messages("Which corner?", seed=5), keep_ratio=0.25, pruning_detail=True
    )
    assert response.status_code == 200, response.text
    [item] = response.json()["usage"]["pruning_detail"]
    assert item["method"] == "uniform_stride" and item["fallback"] == "non_finite"
    expected = uniform_fallback(N_VISUAL, 1, resolve_params(keep_ratio=0.25))
    assert item["kept"] == expected.tolist()
