# SPDX-License-Identifier: Apache-2.0
"""Memory kept by each decoded image and video, on the API server's own decode path.

The soak (``benchmarks/soak.py``) shows the API server's resident memory (RSS) growing steadily
with the default mix, and half as fast without videos (``--mix video=0``). This script isolates
the videos' part in one process: it loads ``--items`` seeded images, then as many 4-frame MP4
videos, through vLLM's ``MediaConnector`` (what the API server calls for every ``image_url`` and
``video_url`` part), and every ``--items / 10`` loads records the RSS and the Python heap that
``tracemalloc`` sees. The slope per item (least squares after the first tenth) is what each load
leaves behind.

The video path goes through OpenCV's Python stream reader (vLLM opens
``cv2.VideoCapture(BytesIO(data), ...)``): each ``read``/``seek`` that FFmpeg makes on the stream
calls back into Python with a method-name string that the reader creates and never releases
(``PyString_FromString("read")`` passed straight to ``PyObject_CallMethodObjArgs`` in OpenCV's
``modules/videoio/misc/python/pyopencv_videoio.hpp``), so the Python heap grows by a few dozen
53-byte strings per video, and RSS by more. Images (PIL) keep nothing.

    python benchmarks/video_decode_memory.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
import utils  # noqa: E402

POOL = 8  # distinct data URLs per kind, reused round-robin (building one costs more than a load)


def measure(kind: str, items: int, connector) -> list[dict]:
    process = psutil.Process()
    data_url = utils.video_url if kind == "video" else utils.image_url
    urls = [data_url(seed=100 + i) for i in range(POOL)]
    load = connector.fetch_video if kind == "video" else connector.fetch_image
    every = max(1, items // 10)
    rows = []
    started = time.monotonic()
    for i in range(items + 1):
        if i % every == 0:
            gc.collect()
            rows.append(
                {
                    "kind": kind,
                    "loads": i,
                    "rss_mib": round(process.memory_info().rss / 2**20, 2),
                    "python_heap_mib": round(tracemalloc.get_traced_memory()[0] / 2**20, 3),
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            print(rows[-1], flush=True)
        if i < items:
            load(urls[i % POOL])
    return rows


def kib_per_load(rows: list[dict], column: str) -> float:
    points = rows[1:]  # after the first tenth: one-time allocations are done
    slope = np.polyfit([r["loads"] for r in points], [r[column] for r in points], 1)[0]
    return round(float(slope) * 1024, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=4000, help="loads per kind (default 4000)")
    p.add_argument("--out", type=Path, default=utils.RESULTS_DIR / "video-decode-memory")
    args = p.parse_args()

    import cv2
    import PIL
    import vllm
    from vllm.multimodal.media import MediaConnector

    connector = MediaConnector()
    tracemalloc.start(1)
    rows = measure("image", args.items, connector) + measure("video", args.items, connector)
    per_kind = {
        kind: {
            "loads": args.items,
            "rss_kib_per_load": kib_per_load([r for r in rows if r["kind"] == kind], "rss_mib"),
            "python_heap_kib_per_load": kib_per_load(
                [r for r in rows if r["kind"] == kind], "python_heap_mib"
            ),
        }
        for kind in ("image", "video")
    }
    summary = {
        "when": utils.utc_timestamp(),
        "commit": utils.git_commit(),
        "machine": utils.machine_facts(),
        "versions": {
            "python": platform.python_version(),
            "vllm": vllm.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
        },
        "media": f"{POOL} seeded 112x112 PNG images; {POOL} seeded 4-frame 112x112 MP4 videos",
        "per_kind": per_kind,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(per_kind, indent=1))


if __name__ == "__main__":
    main()
