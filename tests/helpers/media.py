# SPDX-License-Identifier: Apache-2.0
"""Generated media for the engine tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def decoded_video(seed: int, frames: int, side: int) -> tuple[Any, dict[str, Any]]:
    """Random decoded frames plus the metadata vLLM's video loader would attach (2 fps, no
    frame sampling), as ``LLM.generate`` takes a pre-decoded video."""
    array = np.random.default_rng(seed).integers(0, 256, (frames, side, side, 3), dtype=np.uint8)
    metadata = {
        "total_num_frames": frames,
        "fps": 2.0,
        "duration": frames / 2.0,
        "video_backend": "opencv",
        "frames_indices": list(range(frames)),
        "do_sample_frames": False,
    }
    return (array, metadata)
