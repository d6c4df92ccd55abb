# SPDX-License-Identifier: Apache-2.0
"""The lmms-eval model ``mipruner`` against lmms-eval's real API (0.7.3).

lmms-eval is an optional extra (``mipruner-vllm[eval]``) and a heavy one (datasets, pandas,
scikit-learn, wandb, sentence-transformers...), so CI does not install it and these tests skip
there, saying so; the adapter's request logic is covered without lmms-eval by
tests/unit/test_eval_client.py. Where lmms-eval is installed, this checks what only it can:
that its registry finds ``mipruner`` through the entry point, and that for the same lmms-eval
requests our model sends exactly the bodies lmms-eval's own ``openai`` model sends, plus the
pruning fields. The endpoint is a small local HTTP server that records the bodies.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.unit
pytest.importorskip(
    "lmms_eval",
    reason="lmms-eval is not installed (optional extra mipruner-vllm[eval]; not in CI: too heavy)",
)

from lmms_eval.api.instance import Instance  # noqa: E402
from PIL import Image  # noqa: E402

from mipruner_vllm.errors import PruningParameterError  # noqa: E402


class Endpoint:
    """A local OpenAI-style endpoint: records chat bodies, answers 'yes' with pruning usage."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": "mipruner-demo",
                                "object": "model",
                                "created": 0,
                                "owned_by": "x",
                            }
                        ],
                    },
                )

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.bodies.append(body)
                if endpoint.status != 200:
                    self._send(
                        endpoint.status,
                        {
                            "error": {
                                "message": "Invalid request field 'mi_tau'",
                                "type": "BadRequestError",
                                "code": endpoint.status,
                            }
                        },
                    )
                    return
                self._send(
                    200,
                    {
                        "id": "c",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "yes"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 40,
                            "completion_tokens": 1,
                            "total_tokens": 41,
                            "visual_tokens": 16,
                            "visual_tokens_kept": 4,
                        },
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def endpoint():
    e = Endpoint()
    yield e
    e.close()


DOCS = {
    0: {"q": "Is there a red square?", "rgb": (200, 30, 30)},
    1: {"q": "Is it blue?", "rgb": (30, 30, 200)},
}


def _doc_to_messages(doc):
    image = Image.new("RGB", (56, 56), doc["rgb"])
    return [
        {
            "role": "user",
            "content": [{"type": "image", "url": image}, {"type": "text", "text": doc["q"]}],
        }
    ]


def _requests():
    gen_kwargs = {"max_new_tokens": 8, "temperature": 0, "top_p": 1.0}
    return [
        Instance(
            "generate_until",
            (DOCS[i]["q"], _doc_to_messages, gen_kwargs, i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i in DOCS
    ]


def _model(arg_string: str):
    from lmms_eval.models import get_model

    model = get_model("mipruner").create_from_arg_string(arg_string)
    model.task_dict = {"t": {"test": DOCS}}
    return model


def test_lmms_eval_finds_the_model_through_the_entry_point():
    from lmms_eval.models import get_model, get_model_manifest

    from mipruner_vllm.evaluation.lmms_eval_model import MIPrunerChat

    assert get_model("mipruner") is MIPrunerChat
    assert get_model_manifest("mipruner").chat_class_path.endswith("lmms_eval_model.MIPrunerChat")


def test_same_bodies_as_lmms_eval_openai_model_plus_the_fields(endpoint, tmp_path):
    from lmms_eval.models import get_model

    stock = get_model("openai").create_from_arg_string(
        f"base_url={endpoint.url},model=mipruner-demo,api_key=x,num_concurrent=1"
    )
    stock.task_dict = {"t": {"test": DOCS}}
    stock.generate_until(_requests())
    reference = sorted(endpoint.bodies, key=json.dumps)
    endpoint.bodies.clear()

    report = tmp_path / "usage.json"
    # lmms-eval's parser turns keep_ratio=1 into an integer and mi_lambda=1 too: sent as numbers.
    ours = _model(
        f"base_url={endpoint.url},model=mipruner-demo,keep_ratio=0.25,pruning_method=mi,"
        f"mi_lambda=1,num_concurrent=1,usage_report={report}"
    )
    results = ours.generate_until(_requests())
    assert [r.text for r in results] == ["yes", "yes"]
    fields = {"keep_ratio": 0.25, "pruning_method": "mi", "mi_lambda": 1.0}
    sent = sorted(endpoint.bodies, key=json.dumps)
    assert len(sent) == len(reference) == 2
    for body, stock_body in zip(sent, reference, strict=True):
        assert {k: body[k] for k in fields} == fields and isinstance(body["mi_lambda"], float)
        assert {k: v for k, v in body.items() if k not in fields} == stock_body

    summary = json.loads(report.read_text())
    assert summary["pruning_fields"] == fields
    assert (summary["requests"], summary["requests_failed"], summary["samples_failed"]) == (2, 0, 0)
    assert (summary["visual_tokens"], summary["visual_tokens_kept"]) == (32, 8)


def test_model_name_defaults_to_the_endpoint_s_first_model(endpoint):
    ours = _model(f"base_url={endpoint.url},keep_tokens=4")
    assert ours.model_version == "mipruner-demo"
    ours.generate_until(_requests()[:1])
    assert (
        endpoint.bodies[-1]["model"] == "mipruner-demo" and endpoint.bodies[-1]["keep_tokens"] == 4
    )


def test_bad_fields_stop_before_any_request(endpoint):
    for args in ("keep_ration=0.25", "keep_ratio=1.5", "mi_tau=5000", "pruning_method=best"):
        with pytest.raises(PruningParameterError):
            _model(f"base_url={endpoint.url},model=m,{args}")
    assert endpoint.bodies == []


def test_rejected_requests_are_reported_as_failed_samples(tmp_path):
    endpoint = Endpoint(status=400)
    try:
        report = tmp_path / "usage.json"
        ours = _model(
            f"base_url={endpoint.url},model=m,keep_ratio=0.25,max_retries=2,retry_backoff_s=0,"
            f"num_concurrent=1,usage_report={report}"
        )
        results = ours.generate_until(_requests())
    finally:
        endpoint.close()
    # lmms-eval turns the failure into a text it will score as a wrong answer...
    assert all(r.text.startswith("[LMMS_EVAL_REQUEST_FAILED") for r in results)
    # ...and the report says what happened.
    summary = json.loads(report.read_text())
    assert (summary["samples_failed"], summary["requests_failed"]) == (2, 4)
    assert "400" in summary["first_error"]
