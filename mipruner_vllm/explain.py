# SPDX-License-Identifier: Apache-2.0
"""A picture of what was kept: ask a running server with ``pruning_detail`` and draw the answer.

:func:`explain` sends one image or video and a question to a running ``mipruner-vllm serve``
(with any pruning fields), reads ``usage.pruning_detail`` and returns the model's answer, the
detail and a picture (:func:`draw_kept`): the pruned patches dimmed, the kept ones outlined; a
video is a strip of its temporal grid's frames. With ``scores=True`` (``--scores``) the request
also asks ``pruning_detail_scores`` and every patch is shaded by its score instead (a heat
overlay, :func:`heat_colour`), the kept ones still outlined. ``mipruner-vllm explain`` writes that
picture as a PNG. Needs Pillow and httpx (both come with vLLM); no vLLM in the calling process.

The overlay maps the item's token grid (t, h, w; LLM tokens after the spatial merge) evenly onto
the picture: the model resized the media to a multiple of its patch size, so a cell covers
``1/w`` of the width and ``1/h`` of the height of the original. For a video the strip shows ``t``
evenly spaced frames of the clip, one per temporal token (Qwen's temporal patch spans several
decoded frames, so a strip frame stands for its group).
"""

from __future__ import annotations

import base64
import dataclasses
import mimetypes
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Explanation", "draw_kept", "explain", "heat_colour", "media_frames", "request_detail"]

#: Brightness of a pruned patch (1 = unchanged).
DIM = 0.28
OUTLINE = (255, 196, 0)
#: Heat overlay: the colours of the lowest, middle and highest score of the item, and how much
#: of a patch's colour the overlay replaces.
HEAT_STOPS = ((40, 70, 220), (250, 230, 60), (220, 30, 30))
HEAT_ALPHA = 0.55


@dataclasses.dataclass
class Explanation:
    """The model's answer, the item's ``usage.pruning_detail`` entry and the picture."""

    answer: str
    detail: dict[str, Any]
    usage: dict[str, Any]
    picture: Image.Image


def _data_url(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _is_video(path: Path) -> bool:
    return (mimetypes.guess_type(path.name)[0] or "").startswith("video/")


def request_detail(
    base_url: str,
    media: str | Path,
    question: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_tokens: int = 64,
    timeout: float = 300.0,
    **fields: Any,
) -> tuple[str, dict[str, Any]]:
    """Ask the server about one image or video with ``pruning_detail``; (answer, usage).

    ``fields`` are pruning request fields (``keep_ratio=0.25``, ``pruning_method="mi"``...). A
    refusal (HTTP 400) raises ``ValueError`` with the server's message.
    """
    import httpx

    path = Path(media)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = base_url.rstrip("/")
    with httpx.Client(base_url=base, headers=headers, timeout=timeout) as client:
        if model is None:
            model = client.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        kind = "video_url" if _is_video(path) else "image_url"
        body = {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": kind, kind: {"url": _data_url(path)}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            **fields,
            "pruning_detail": True,
        }
        response = client.post("/v1/chat/completions", json=body)
    if response.status_code == 400:
        raise ValueError(response.json().get("error", {}).get("message", response.text))
    response.raise_for_status()
    payload = response.json()
    return payload["choices"][0]["message"]["content"] or "", payload["usage"]


def media_frames(media: str | Path, frames: int = 1) -> list[Image.Image]:
    """The picture(s) to draw on: the image, or ``frames`` evenly spaced frames of a video."""
    from PIL import Image

    path = Path(media)
    if not _is_video(path):
        return [Image.open(path).convert("RGB")]
    import cv2

    capture = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    capture.release()
    if not decoded:
        raise ValueError(f"{path}: no frame could be decoded")
    picks = [
        min(len(decoded) - 1, (2 * i + 1) * len(decoded) // (2 * frames)) for i in range(frames)
    ]
    return [Image.fromarray(cv2.cvtColor(decoded[i], cv2.COLOR_BGR2RGB)) for i in picks]


def draw_kept(
    frames: list[Image.Image],
    item: dict[str, Any],
    *,
    caption: str | None = None,
    heat: bool = False,
) -> Image.Image:
    """Dim the pruned patches and outline the kept ones of one ``usage.pruning_detail`` item.

    ``frames``: the image (one) or the video's ``t`` strip frames. ``caption`` is written under
    the picture (the answer, say). ``heat``: shade every patch by its score (the item's
    ``scores``, min-max scaled over the item: :func:`heat_colour`) instead of dimming the pruned
    ones. Raises ``ValueError`` for an item without a grid or indices, or without scores when
    ``heat`` is asked, with the reason the response gave.
    """
    if item.get("grid") is None or item.get("kept") is None:
        raise ValueError(
            "this item has no token grid or no indices to draw: "
            + str(item.get("omitted") or "the model's tokens form no single grid")
        )
    t, h, w = item["grid"]
    if len(frames) != t:
        raise ValueError(f"the grid has {t} frames, got {len(frames)} pictures")
    colours = None
    if heat:
        if item.get("scores") is None:
            raise ValueError("this item has no scores to draw: " + str(item.get("scores_omitted")))
        colours = [heat_colour(x) for x in _scaled(item["scores"])]
    tiles = [
        _draw_frame(frame.convert("RGB"), (h, w), set(item["kept"]), f * h * w, colours)
        for f, frame in enumerate(frames)
    ]
    return _with_caption(tiles, caption)


def _scaled(scores: list[float]) -> list[float]:
    """Scores min-max scaled to [0, 1] over the item (all 0.5 when they are all equal)."""
    low, high = min(scores), max(scores)
    if high <= low:
        return [0.5] * len(scores)
    return [(x - low) / (high - low) for x in scores]


def heat_colour(x: float) -> tuple[int, int, int]:
    """The overlay colour of a scaled score ``x`` in [0, 1]: blue (low), yellow, red (high)."""
    x = min(1.0, max(0.0, x))
    (a, b), s = (HEAT_STOPS[:2], 2 * x) if x <= 0.5 else (HEAT_STOPS[1:], 2 * x - 1)
    return tuple(round(p + (q - p) * s) for p, q in zip(a, b, strict=True))  # type: ignore[return-value]


def _draw_frame(
    frame: Image.Image,
    grid: tuple[int, int],
    kept: set[int],
    first: int,
    colours: list[tuple[int, int, int]] | None,
) -> Image.Image:
    """One frame: kept cells outlined; the others dimmed, or every cell shaded by ``colours``
    (indexed like the item's tokens; this frame's cells start at token ``first``)."""
    from PIL import Image, ImageDraw, ImageEnhance

    h, w = grid
    out = frame.copy() if colours is not None else ImageEnhance.Brightness(frame).enhance(DIM)
    draw = ImageDraw.Draw(out)
    width, height = frame.size
    for row in range(h):
        for col in range(w):
            index = first + row * w + col
            box = (col * width // w, row * height // h,
                   (col + 1) * width // w, (row + 1) * height // h)  # fmt: skip
            if colours is not None:
                cell = frame.crop(box)
                shade = Image.new("RGB", cell.size, colours[index])
                out.paste(Image.blend(cell, shade, HEAT_ALPHA), box[:2])
            if index not in kept:
                continue
            if colours is None:
                out.paste(frame.crop(box), box[:2])
            draw.rectangle(
                (box[0], box[1], box[2] - 1, box[3] - 1),
                outline=OUTLINE,
                width=max(1, width // 160),
            )
    return out


def _with_caption(tiles: list[Image.Image], caption: str | None) -> Image.Image:
    """The frames side by side, ``caption`` written under them."""
    from PIL import Image, ImageDraw

    gap = 6
    strip_w = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    strip_h = max(tile.height for tile in tiles)
    lines = textwrap.wrap(caption or "", width=max(20, strip_w // 7))[:8]
    band = 14 * len(lines) + (12 if lines else 0)
    canvas = Image.new("RGB", (strip_w, strip_h + band), (255, 255, 255))
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + gap
    text = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        text.text((6, strip_h + 6 + 14 * n), line, fill=(0, 0, 0))
    return canvas


def explain(
    base_url: str,
    media: str | Path,
    question: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_tokens: int = 64,
    scores: bool = False,
    **fields: Any,
) -> Explanation:
    """Ask the server and draw what it kept (see the module docstring); for notebooks too.

    ``scores``: also ask the per-token scores and shade the patches by them (an item without
    scores, such as a ``divprune`` one, is drawn as without, its caption saying why).
    """
    if scores:
        fields["pruning_detail_scores"] = True
    answer, usage = request_detail(
        base_url, media, question, model=model, api_key=api_key, max_tokens=max_tokens, **fields
    )
    item = usage["pruning_detail"][0]
    t = item["grid"][0] if item.get("grid") else 1
    kept = f"kept {item['visual_tokens_kept']} of {item['visual_tokens']} tokens"
    method = item["method"] + (f" (fallback: {item['fallback']})" if item.get("fallback") else "")
    caption = f"Q: {question} | {kept}, method {method} | A: {answer.strip()}"
    heat = scores and item.get("scores") is not None
    if heat:
        caption += f" | heat: {item.get('score')}, blue low, red high"
    elif scores:
        caption += f" | no scores: {item.get('scores_omitted')}"
    picture = draw_kept(media_frames(media, t), item, caption=caption, heat=heat)
    return Explanation(answer, item, usage, picture)


def _parser() -> Any:
    import argparse

    from mipruner_vllm.config import PRUNING_PARAMETERS

    parser = argparse.ArgumentParser(
        prog="mipruner-vllm explain",
        description="Ask a running server about an image or video with pruning_detail and write "
        "a PNG of the kept patches (pruned ones dimmed, kept ones outlined) with the answer.",
    )
    parser.add_argument("media", help="An image or video file (mp4, webm...).")
    parser.add_argument("--question", "-q", required=True)
    parser.add_argument("--out", "-o", default="kept.png", help="PNG to write (default kept.png).")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="The server's base URL.")
    parser.add_argument("--model", default=None, help="Served model name (default: the first).")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--scores",
        action="store_true",
        help="Also ask each token's ranking score (pruning_detail_scores) and shade the patches "
        "by it (blue low, red high), the kept ones still outlined.",
    )
    fields = parser.add_argument_group("pruning fields (the request's; unset: server defaults)")
    for p in PRUNING_PARAMETERS:
        if p.kind is bool:
            continue
        kind = p.kind if p.choices is None else str
        fields.add_argument(p.flag, dest=p.request, type=kind, default=None, help=p.allowed)
    return parser


def main(argv: list[str]) -> int:
    """``mipruner-vllm explain``: returns the exit status (2 for a refused request)."""
    args = vars(_parser().parse_args(argv))
    media, question, out = args.pop("media"), args.pop("question"), Path(args.pop("out"))
    options = {k: args.pop(k) for k in ("url", "model", "api_key", "max_tokens", "scores")}
    fields = {k: v for k, v in args.items() if v is not None}
    try:
        result = explain(
            options["url"],
            media,
            question,
            model=options["model"],
            api_key=options["api_key"],
            max_tokens=options["max_tokens"],
            scores=options["scores"],
            **fields,
        )
    except ValueError as exc:
        print(f"mipruner-vllm explain: {exc}")
        return 2
    result.picture.save(out, format="PNG")
    item = result.detail
    print(
        f"{out}: kept {item['visual_tokens_kept']} of {item['visual_tokens']} tokens "
        f"({item['method']}); answer: {result.answer.strip()}"
    )
    return 0
