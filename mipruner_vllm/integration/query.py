# SPDX-License-Identifier: Apache-2.0
"""The query text T of each media item (the query policy of docs/plugin.md, "What the selection
sees"), taken from the prompt's token ids.

Policy, identical offline (``LLM.generate`` / ``LLM.chat``) and online (OpenAI server), because
both reach the multimodal processor with the same templated prompt token ids:

1. The prompt is decoded with each media placeholder (``<|image_pad|>``, ``<image>``...) replaced
   by a marker, so the item a placeholder belongs to stays known.
2. The *user turn that carries the item* is located with the chat-template conventions the
   supported families use: ChatML (``<|im_start|>user ... <|im_end|>``, Qwen), Vicuna
   (``USER: ... ASSISTANT:``, LLaVA-1.5 / LLaVA-NeXT-vicuna), Mistral (``[INST] ... [/INST]``)
   and Llama-3 headers. A prompt that matches none of them (a raw prompt without a template) uses
   the whole prompt as the turn.
3. From that turn, everything that is not the user's question is removed: special and added
   tokens (vision markers, turn markers), the role label, ``Picture n:`` / ``Video n:`` labels that
   some templates put before media, and surrounding whitespace. The system prompt is never part of
   a user turn, so it is excluded by step 2.
4. The remaining text is tokenized with the model's tokenizer (no special tokens added).

A turn without text (image only) gives N_T = 0; the selection then follows the documented
uniform-stride rule of :func:`mipruner_vllm.pruning.select.select_tokens_batch`.

This module needs only a tokenizer (anything with ``decode``/``encode``), not vLLM.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_MARK = "\x00{}\x00"
_MARK_RE = re.compile(r"\x00\d+\x00")

# Content of user turns, per template family. Each pattern's group 1 is the turn's content.
_USER_TURN_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"<\|im_start\|>user\n(.*?)(?=<\|im_end\|>|<\|im_start\|>|$)", re.S),
    re.compile(
        r"<\|start_header_id\|>user<\|end_header_id\|>\n*(.*?)"
        r"(?=<\|eot_id\|>|<\|start_header_id\|>|$)",
        re.S,
    ),
    re.compile(r"\[INST\](.*?)(?=\[/INST\]|$)", re.S),
    re.compile(r"(?:^|(?<=\s)|(?<=>))USER:(.*?)(?=ASSISTANT:|(?<=\s)USER:|$)", re.S),
)
# Labels some chat templates put right before a media item ("Picture 1: <|vision_start|>...").
_MEDIA_LABEL_RE = re.compile(r"(?:Picture|Image|Video)\s*\d+\s*:\s*(?=\x00)")


def _special_tokens(tokenizer: Any) -> tuple[list[str], set[int]]:
    """Special and added tokens: their strings (longest first, for removal) and their ids."""
    added: dict[str, int] = {}
    get_added = getattr(tokenizer, "get_added_vocab", None)
    if callable(get_added):
        try:
            added = dict(get_added())
        except Exception:  # pragma: no cover - tokenizer wrappers without an added vocab
            added = {}
    strings = set(getattr(tokenizer, "all_special_tokens", []) or []) | set(added)
    ids = set(getattr(tokenizer, "all_special_ids", []) or []) | set(added.values())
    return sorted((s for s in strings if s), key=len, reverse=True), ids


def _clean(turn: str, specials: Sequence[str]) -> str:
    turn = _MEDIA_LABEL_RE.sub("", turn)
    turn = _MARK_RE.sub(" ", turn)
    for special in specials:
        turn = turn.replace(special, " ")
    return turn.strip()


def query_token_ids(
    tokenizer: Any,
    prompt_ids: Sequence[int],
    media_tokens: Mapping[int, str],
) -> dict[str, list[list[int]]]:
    """Query token ids per media item: ``{modality: [ids of item 0, ids of item 1, ...]}``.

    ``media_tokens`` maps each *unexpanded* placeholder token id in ``prompt_ids`` to its
    modality; the k-th placeholder of a modality is that modality's item k (vLLM's order).
    """
    pieces: list[str] = []
    items: list[str] = []
    chunk: list[int] = []

    def flush() -> None:
        if chunk:
            pieces.append(tokenizer.decode(chunk, skip_special_tokens=False))
            chunk.clear()

    for tid in prompt_ids:
        modality = media_tokens.get(int(tid))
        if modality is None:
            chunk.append(int(tid))
            continue
        flush()
        pieces.append(_MARK.format(len(items)))
        items.append(modality)
    flush()
    text = "".join(pieces)

    # Item index -> (start, end) of the user turn containing its marker.
    spans: dict[int, tuple[int, int]] = {}
    for pattern in _USER_TURN_PATTERNS:
        for match in pattern.finditer(text):
            for mark in _MARK_RE.finditer(match.group(1)):
                spans.setdefault(int(mark.group(0)[1:-1]), match.span(1))
        if spans:
            break  # one template family per prompt

    specials, special_ids = _special_tokens(tokenizer)
    special_ids |= set(media_tokens)
    encoded: dict[tuple[int, int], list[int]] = {}
    out: dict[str, list[list[int]]] = {}
    for index, modality in enumerate(items):
        span = spans.get(index, (0, len(text)))
        if span not in encoded:
            question = _clean(text[span[0] : span[1]], specials)
            ids = tokenizer.encode(question, add_special_tokens=False) if question else []
            encoded[span] = [int(i) for i in ids if int(i) not in special_ids]
        out.setdefault(modality, []).append(list(encoded[span]))
    return out
