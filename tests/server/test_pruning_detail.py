# SPDX-License-Identifier: Apache-2.0
"""``pruning_detail``: the kept patches of a request, from the worker to its own response.

A real ``mipruner-vllm serve`` on the embedded tiny Qwen2.5-VL (a 112 x 112 image is a 4 x 4
grid of 16 LLM tokens). The detail's indices are compared with what the worker logged for the
same item (``MIPRUNER_DEBUG_DIR``'s ``selections.jsonl``, written by the worker next to the
detail file, from the same tensor) and, for one image, recomputed with the torch reference
``select_tokens`` on the worker's inputs rebuilt by Hugging Face transformers from the demo
checkpoint. Also: keep_ratio 1 lists every token, a request without the field gets no detail,
concurrent requests each get their own, a stream carries it in its final usage chunk only,
bad values are a 400 naming the field, the encoder store's hit path reports too, and no detail
file outlives its response.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers.server import MODEL, N_VISUAL, image_messages, selections, video_data_url

from mipruner_vllm.detail import detail_dir
from mipruner_vllm.params import n_keep

pytestmark = pytest.mark.server

GRID = [1, 4, 4]


def _chat(server, messages, timeout=300, **fields) -> httpx.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": 2, "temperature": 0.0, **fields}
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=timeout)


def _detail(response: httpx.Response) -> list[dict] | None:
    assert response.status_code == 200, response.text
    return response.json()["usage"].get("pruning_detail")


def _logged(server, since: int) -> list[dict]:
    return selections(server)[since:]


def _files() -> set[str]:
    return {p.name for p in detail_dir().glob("*.json")}


def _embeddings_outside_vllm(demo_model_dir, seed: int, text_ids: list[int]) -> tuple:
    """The projector output of ``image_data_url(seed)`` and the embeddings of the worker's query
    token ids, rebuilt with Hugging Face transformers from the checkpoint the server serves."""
    import base64
    import io

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from helpers.server import image_data_url
    from PIL import Image

    from mipruner_vllm.server.launcher import DEMO_ARCH, DEMO_SIZE

    checkpoint = demo_model_dir(DEMO_ARCH, DEMO_SIZE)  # what the default server serves
    processor = transformers.AutoProcessor.from_pretrained(checkpoint)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval()
    url = image_data_url(seed)
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    inputs = processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        return out.pooler_output[0], model.get_input_embeddings()(torch.tensor(text_ids))


def test_no_field_no_detail_and_keep_all_lists_every_token(server) -> None:
    # The playground is off unless --playground is given (test_playground_browser.py).
    assert httpx.get(server.base_url + "/playground", timeout=30).status_code == 404
    plain = _chat(server, image_messages(seed=11), keep_ratio=0.5)
    assert _detail(plain) is None
    assert "pruning_detail" not in plain.json()["usage"]
    off = _chat(server, image_messages(seed=11), keep_ratio=0.5, pruning_detail=False)
    assert _detail(off) is None

    [item] = _detail(_chat(server, image_messages(seed=12), keep_ratio=1.0, pruning_detail=True))
    assert item["modality"] == "image" and item["grid"] == GRID
    assert item["visual_tokens"] == item["visual_tokens_kept"] == N_VISUAL
    assert item["kept"] == list(range(N_VISUAL))
    assert item["method"] == "none" and item["fallback"] is None


@pytest.mark.parametrize("fields", [{"keep_ratio": 0.25}, {"keep_tokens": 5, "mi_lambda": 0.5}])
def test_pruned_indices_are_the_ones_the_worker_selected(server, fields) -> None:
    before = len(selections(server))
    question = f"Which part of the picture matters for {sorted(fields)}?"
    response = _chat(server, image_messages(question, seed=13), pruning_detail=True, **fields)
    [item] = _detail(response)
    expected = n_keep(
        N_VISUAL, keep_ratio=fields.get("keep_ratio"), keep_tokens=fields.get("keep_tokens")
    )
    assert item["visual_tokens_kept"] == expected == len(item["kept"])
    assert item["kept"] == sorted(set(item["kept"])) and 0 <= min(item["kept"])
    assert max(item["kept"]) < N_VISUAL
    assert item["method"] == "mi" and item["fallback"] is None and item["grid"] == GRID
    [logged] = _logged(server, before)
    assert item["kept"] == logged["kept"]


def test_indices_reproduce_select_tokens_on_the_same_inputs(server, demo_model_dir) -> None:
    """The torch reference on the projector output and query embeddings, rebuilt with Hugging
    Face transformers from the served checkpoint and the worker's own query token ids."""
    from mipruner_vllm import select_tokens

    before = len(selections(server))
    response = _chat(
        server,
        image_messages("Where is the red corner?", seed=14),
        keep_ratio=0.25,
        pruning_detail=True,
    )
    [item] = _detail(response)
    [logged] = _logged(server, before)
    visual, text = _embeddings_outside_vllm(demo_model_dir, 14, logged["text_ids"])
    expected = select_tokens(visual.float(), text.float(), keep_ratio=0.25, backend="torch")
    assert visual.shape[0] == N_VISUAL
    assert item["kept"] == expected.tolist()


def test_concurrent_requests_each_get_their_own_detail(server) -> None:
    """Mixed batches: requests with and without the field, each with its own budget."""

    def run(i: int) -> tuple[int, dict]:
        fields = {"keep_tokens": 1 + i % 8}
        if i % 3:
            fields["pruning_detail"] = True
        response = _chat(server, image_messages(f"Question {i}?", seed=100 + i), **fields)
        assert response.status_code == 200, response.text
        return i, response.json()["usage"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, range(12)))
    for i, usage in results:
        if i % 3 == 0:
            assert "pruning_detail" not in usage
            continue
        [item] = usage["pruning_detail"]
        assert len(item["kept"]) == item["visual_tokens_kept"] == 1 + i % 8, (i, item)
    assert not _files(), "a detail file outlived its response"


def test_stream_carries_detail_in_the_final_usage_chunk_only(server) -> None:
    body = {
        "model": MODEL,
        "messages": image_messages("Describe it.", seed=15),
        "max_tokens": 3,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "keep_ratio": 0.5,
        "pruning_detail": True,
    }
    chunks = []
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json=body, timeout=300
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    with_detail = [c for c in chunks if (c.get("usage") or {}).get("pruning_detail")]
    assert len(with_detail) == 1 and with_detail[0] is chunks[-1]
    assert with_detail[0]["choices"] == []
    [item] = with_detail[0]["usage"]["pruning_detail"]
    assert len(item["kept"]) == n_keep(N_VISUAL, keep_ratio=0.5)
    assert all("visual_tokens" in c["usage"] for c in chunks[:-1] if c.get("usage"))


@pytest.mark.parametrize(
    "fields",
    [
        {"pruning_detail": "yes"},
        {"pruning_detail": 1},
        {"mm_processor_kwargs": {"pruning_detail": None, "pruning_detai": True}},
        {"stream": True, "pruning_detail": True},
    ],
)
def test_bad_values_are_a_400_naming_the_field(server, fields) -> None:
    response = _chat(server, image_messages(seed=16), timeout=60, **fields)
    assert response.status_code == 400, response.text
    param = response.json()["error"]["param"]
    assert param.endswith("pruning_detail") or param.endswith("pruning_detai"), param


def test_store_hits_and_video_report_their_detail(server) -> None:
    # Two questions about one image: the second takes the stored encoder output.
    for question in ("What colour is it?", "Is there a corner?"):
        [item] = _detail(
            _chat(server, image_messages(question, seed=17), keep_ratio=0.25, pruning_detail=True)
        )
        assert len(item["kept"]) == 4 and item["method"] == "mi"
    records = (server.debug_dir / "encoder.jsonl").read_text().splitlines()
    assert json.loads(records[-1])["hits"] >= 1, "the second question must be a store hit"

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": video_data_url(frames=4, seed=2)}},
                {"type": "text", "text": "What moves?"},
            ],
        }
    ]
    before = len(selections(server))
    [video] = _detail(_chat(server, messages, keep_ratio=0.25, pruning_detail=True))
    t, h, w = video["grid"]
    assert video["modality"] == "video" and t * h * w == video["visual_tokens"]
    assert len(video["kept"]) == video["visual_tokens_kept"] == n_keep(t * h * w, keep_ratio=0.25)
    assert video["kept"] == _logged(server, before)[0]["kept"]
    assert not _files()


def test_scores_arrive_per_token_consistent_with_kept_and_bad_values_are_refused(
    server, demo_model_dir
) -> None:
    """``pruning_detail_scores``: one score per visual token, the kept set is the top-k of them
    (mi, lambda 1; a store hit too), they are S_cross of Eq. 19 recomputed from the worker's
    inputs rebuilt with Hugging Face transformers, methods without a score say why, and a bad
    value (or the field without ``pruning_detail``) is a 400 naming it."""
    import math

    torch = pytest.importorskip("torch")

    from mipruner_vllm.pruning.reference import cross_modal_scores

    scored = {"pruning_detail": True, "pruning_detail_scores": True}
    before = len(selections(server))
    items = []
    for question in ("Where is the red corner?", "Is anything blue?"):  # the second: a store hit
        [item] = _detail(
            _chat(server, image_messages(question, seed=18), keep_ratio=0.25, **scored)
        )
        scores = item["scores"]
        assert len(scores) == item["visual_tokens"] == N_VISUAL and "scores_omitted" not in item
        assert all(isinstance(x, float) and math.isfinite(x) for x in scores)
        kept = set(item["kept"])
        assert len(kept) == n_keep(N_VISUAL, keep_ratio=0.25) and item["method"] == "mi"
        assert min(scores[i] for i in kept) >= max(
            scores[i] for i in range(N_VISUAL) if i not in kept
        )
        assert "Eq. 19" in item["score"]
        items.append(item)
    [logged, _] = _logged(server, before)

    # The first question's scores from the served checkpoint, outside vLLM.
    visual, text = _embeddings_outside_vllm(demo_model_dir, 18, logged["text_ids"])
    # The checkpoint is bf16: vLLM's vision tower and transformers' round differently (~0.005
    # on these scores), so the check is a tolerance well under the scores' spread (~1).
    first = torch.tensor(items[0]["scores"])
    expected = cross_modal_scores(visual.float(), text.float(), tau=0.1)
    difference = float((first - expected).abs().max())
    assert difference <= 0.03, (difference, first.tolist(), expected.tolist())
    assert float(expected.max() - expected.min()) > 10 * difference

    greedy = _detail(_chat(server, image_messages(seed=19), keep_tokens=4, mi_lambda=0.5, **scored))
    assert "starts from" in greedy[0]["score"] and len(greedy[0]["scores"]) == N_VISUAL
    [divprune] = _detail(
        _chat(server, image_messages(seed=19), keep_tokens=4, pruning_method="divprune", **scored)
    )
    assert divprune["scores"] is None and "divprune" in divprune["scores_omitted"]
    assert len(divprune["kept"]) == 4
    [plain] = _detail(_chat(server, image_messages(seed=19), keep_tokens=4, pruning_detail=True))
    assert not {"scores", "score", "scores_omitted"} & set(plain)

    for bad in (
        {"pruning_detail_scores": True},  # without pruning_detail
        {"pruning_detail": True, "pruning_detail_scores": "yes"},
        {"pruning_detail": True, "pruning_detail_scores": 1},
        {"mm_processor_kwargs": {"pruning_detail": True, "pruning_detail_scores": "yes"}},
    ):
        response = _chat(server, image_messages(seed=20), timeout=60, **bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["param"].endswith("pruning_detail_scores"), bad
    assert not _files()


def test_asked_without_media_is_an_empty_list_on_chat_and_completions(server) -> None:
    """No media item, nothing kept: ``usage.pruning_detail`` is ``[]`` (asked, so present),
    on both routes and in a stream's final usage chunk; not asked, no key."""
    chat = _chat(server, [{"role": "user", "content": "Hi"}], pruning_detail=True)
    assert _detail(chat) == []
    assert chat.json()["usage"]["visual_tokens"] == 0
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0.0}
    url = server.base_url + "/v1/completions"
    completion = httpx.post(url, json={**body, "pruning_detail": True}, timeout=300)
    assert _detail(completion) == []
    plain = httpx.post(url, json=body, timeout=300)
    assert plain.status_code == 200 and "pruning_detail" not in plain.json()["usage"]
    stream = {**body, "pruning_detail": True, "stream": True}
    stream["stream_options"] = {"include_usage": True}
    chunks = []
    with httpx.stream("POST", url, json=stream, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["pruning_detail"] == []
    assert all("pruning_detail" not in (c.get("usage") or {}) for c in chunks[:-1])
