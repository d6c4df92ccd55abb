# SPDX-License-Identifier: Apache-2.0
"""The installed environment: vLLM, torchvision and transformers' processors, offline.

These fail first when the install is broken (DESIGN.md section 8): CUDA torchvision next to CPU
torch, a missing ``.pth`` hook, or a transformers that cannot build the Qwen-VL processors.
No engine is started here (tests/vllm does that).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.env


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Everything must work with no model hub: any download attempt fails the test.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_vllm_imports() -> None:
    import vllm
    from vllm import LLM, SamplingParams  # noqa: F401 - the import is the check

    assert vllm.__version__.startswith("0.32.")


def test_torchvision_imports_and_transforms_work() -> None:
    import torch
    import torchvision
    from torchvision.transforms.v2 import functional as F

    assert torchvision.__version__
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    # The pure-Python transforms are what the Qwen-VL processors use.
    assert F.resize(image, [4, 4], antialias=True).shape == (3, 4, 4)


def _image(side: int):
    from PIL import Image

    return Image.new("RGB", (side, side), (10, 200, 30))


@pytest.mark.parametrize(
    ("arch", "processor_class", "video_processor_class"),
    [
        ("qwen2_vl", "Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
        ("qwen2_5_vl", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
        ("qwen3_vl", "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
    ],
)
def test_qwen_processor_builds_offline(
    arch: str, processor_class: str, video_processor_class: str, demo_model_dir
) -> None:
    import numpy as np
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(demo_model_dir(arch))
    assert type(processor).__name__ == processor_class
    assert type(processor.video_processor).__name__ == video_processor_class
    side = 128 if arch == "qwen3_vl" else 112
    text = "<|vision_start|><|image_pad|><|vision_end|>What is in this image?"
    out = processor(text=[text], images=[_image(side)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert (
        int((out["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        == 16
    )
    # The video processor runs too (raw frames; no decoder needed).
    frames = np.zeros((4, side, side, 3), dtype=np.uint8)
    video = processor.video_processor(videos=[frames], return_tensors="pt", do_sample_frames=False)
    assert video["video_grid_thw"].tolist() == [[2, 8, 8]]


@pytest.mark.parametrize(
    ("arch", "processor_class", "tokens"),
    [("llava", "LlavaProcessor", 16), ("llava_next", "LlavaNextProcessor", 24)],
)
def test_llava_processor_builds_offline(
    arch: str, processor_class: str, tokens: int, demo_model_dir
) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(demo_model_dir(arch))
    assert type(processor).__name__ == processor_class
    out = processor(text=["USER: <image>\nWhat is in this image? ASSISTANT:"], images=[_image(56)])
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert sum(1 for t in out["input_ids"][0] if t == image_id) == tokens
