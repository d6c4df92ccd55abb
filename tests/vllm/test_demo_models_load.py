# SPDX-License-Identifier: Apache-2.0
"""Smoke test: every tiny demo checkpoint loads in *stock* vLLM on CPU and generates.

Each architecture runs in its own subprocess (this file is also the worker script), so only one
engine is alive at a time, its memory is returned to the OS between archs, and a crash in one
engine cannot take the pytest process down. The worker sends an image through ``LLM.chat`` and,
for the Qwen family, a video through ``LLM.generate`` with raw numpy frames (no video decoder is
needed: torchcodec / torchaudio are not installed on CPU machines). The mipruner plugin is
disabled in the worker (``VLLM_PLUGINS=""``): this test checks the checkpoints, not the plugin.

Run: ``.venv/bin/python -m pytest tests/vllm/test_demo_models_load.py -m vllm``
(about 40-60 s per arch on 2 cores, dominated by engine start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mipruner_vllm.demo_model import DEMO_ARCHS
from mipruner_vllm.families import FAMILIES

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QWEN_ARCHS = tuple(key for key, family in FAMILIES.items() if family.mrope)
#: 16-px patches (Qwen3-VL's vision side): 128-px test images and frames.
QWEN3_VISION = ("qwen3_vl", "qwen3_5", "qwen3_5_moe")
# Visual tokens the tiny processors give for the test image, per arch (see demo_model docs).
EXPECTED_IMAGE_TOKENS = {
    "qwen2_vl": 16,  # 112x112 px, patch 14, merge 2 -> 4x4
    "qwen2_5_vl": 16,
    "qwen3_vl": 16,  # 128x128 px, patch 16, merge 2 -> 4x4
    "qwen3_5": 16,  # Qwen3-VL's vision side
    "qwen3_5_moe": 16,
    "llava": 16,  # 56x56 px, patch 14 -> 4x4, CLS dropped
    "llava_next": 24,  # 56x56: base 2x2 + 2x2 tiles of 2x2 (4x4) + 4 row newlines
}
# 4 frames at 112x112 (qwen3: 128x128), temporal patch 2 -> 2 x 4 x 4.
EXPECTED_VIDEO_TOKENS = 32


def _image(size: int):
    """A deterministic RGB gradient (not blank, so every patch differs)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _data_url(image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _video(arch: str):
    """``(frames, metadata)``: 4 RGB frames as a (T, H, W, 3) uint8 array plus the metadata dict
    vLLM's Qwen2.5-VL / Qwen3-VL parsers require (they derive timing from it)."""
    import numpy as np

    side = 128 if arch in QWEN3_VISION else 112
    frames = np.stack([np.asarray(_image(side)).copy() for _ in range(4)])
    for t in range(4):
        frames[t, :, :, 2] = t * 60  # make frames differ in time
    metadata = {
        "fps": 2.0,
        "duration": 2.0,
        "total_num_frames": 4,
        "frames_indices": [0, 1, 2, 3],
        "video_backend": "opencv",
        "do_sample_frames": False,
    }
    return frames, metadata


def _worker(arch: str, model_dir: str, out_path: str) -> None:
    """Run one engine for ``arch`` and write what it did to ``out_path`` (JSON)."""
    from vllm import LLM, SamplingParams

    qwen = arch in QWEN_ARCHS
    llm = LLM(
        model=model_dir,
        max_model_len=1024,
        max_num_seqs=2,
        enforce_eager=True,
        seed=0,
        limit_mm_per_prompt={"image": 2, "video": 1} if qwen else {"image": 2},
    )
    params = SamplingParams(max_tokens=4, temperature=0.0)
    config = llm.llm_engine.model_config.hf_config
    image_token = config.image_token_id if qwen else config.image_token_index
    side = 128 if arch in QWEN3_VISION else (56 if arch.startswith("llava") else 112)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _data_url(_image(side))}},
                {"type": "text", "text": "What is in this image?"},
            ],
        }
    ]
    result: dict = {}
    out = llm.chat(messages, params)[0]
    result["image_prompt_len"] = len(out.prompt_token_ids)
    result["image_tokens"] = sum(1 for t in out.prompt_token_ids if t == image_token)
    result["image_generated"] = list(out.outputs[0].token_ids)
    if qwen:
        tokenizer = llm.get_tokenizer()
        prompt = tokenizer.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}],
                }
            ],
            add_generation_prompt=True,
            tokenize=False,
        )
        out = llm.generate({"prompt": prompt, "multi_modal_data": {"video": _video(arch)}}, params)[
            0
        ]
        result["video_prompt_len"] = len(out.prompt_token_ids)
        result["video_tokens"] = sum(1 for t in out.prompt_token_ids if t == config.video_token_id)
        result["video_generated"] = list(out.outputs[0].token_ids)
    Path(out_path).write_text(json.dumps(result))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch", DEMO_ARCHS)
def test_demo_model_loads_in_stock_vllm(arch: str, demo_model_dir, tmp_path: Path) -> None:
    model_dir = demo_model_dir(arch)
    out_path = tmp_path / "result.json"
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env["VLLM_PLUGINS"] = ""  # stock vLLM: no mipruner plugin
    proc = subprocess.run(
        [sys.executable, __file__, arch, str(model_dir), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    result = json.loads(out_path.read_text())
    assert result["image_tokens"] == EXPECTED_IMAGE_TOKENS[arch], result
    assert len(result["image_generated"]) >= 1, result
    if arch in QWEN_ARCHS:
        assert result["video_tokens"] == EXPECTED_VIDEO_TOKENS, result
        assert len(result["video_generated"]) >= 1, result


if __name__ == "__main__":
    # Worker mode (spawn-safe: vLLM's engine processes re-import this file as __mp_main__).
    _worker(sys.argv[1], sys.argv[2], sys.argv[3])
