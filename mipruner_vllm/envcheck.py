# SPDX-License-Identifier: Apache-2.0
"""Environment smoke check: the imports and objects the rest of the project relies on."""

from __future__ import annotations


def smoke_report() -> str:
    """Import vLLM and torchvision, build a Qwen2-VL image processor offline, run one selection.

    Returns one line; raises if any step fails (so a shell ``&&`` chain stops there).
    """
    import torch
    import torchvision
    import vllm
    from transformers import Qwen2VLImageProcessor
    from vllm import LLM  # noqa: F401 - the import itself is the check

    from mipruner_vllm import select_tokens

    processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    image = torch.zeros(3, 112, 112, dtype=torch.uint8)
    grid = processor(images=[image], return_tensors="pt")["image_grid_thw"]
    kept = select_tokens(torch.randn(16, 32), torch.randn(4, 32), keep_ratio=0.25)
    return (
        f"ok: vllm {vllm.__version__}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, "
        f"Qwen2-VL processor grid {grid.tolist()}, select_tokens kept {kept.tolist()}"
    )
