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
   A turn ends at its end marker only where the next turn or the prompt's end follows, so a
   client's text that contains a marker string (``<|im_end|>``, which the prompt's tokenizer
   turns into the real token) does not cut the question.
3. From that turn, everything that is not the user's question is removed: the media markers
   with the template's special tokens around them (``<|vision_start|>``...``<|vision_end|>``),
   the role label, ``Picture n:`` / ``Video n:`` labels that some templates put before media, and
   surrounding whitespace. The system prompt is never part of a user turn, so it is excluded by
   step 2. Special-token strings elsewhere in the turn are the client's text and stay.
4. The remaining text is tokenized with the model's tokenizer as plain text: no special tokens
   added, and special-token strings read as the characters they are (the question as the client
   sent it).

A turn without text (image only) gives N_T = 0; the selection then follows the documented
uniform-stride rule of :func:`mipruner_vllm.pruning.select.select_tokens_batch`.

This module needs only a tokenizer (anything with ``decode``/``encode``), not vLLM.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

_MARK = "\x00{}\x00"
_MARK_RE = re.compile(r"\x00\d+\x00")

# Content of user turns, per template family. Each pattern's group 1 is the turn's content. A
# turn ends at its end marker only where the next turn (or the prompt's end) follows, and where
# the template's markers are plain text (Mistral, Vicuna) at the last one before the next turn:
# a client's own text may contain the marker strings (a literal "<|im_end|>", which the prompt's
# tokenizer turns into the very same token), and must not cut the question there.
_USER_TURN_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(
        r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>\s*(?=<\|im_start\|>(?:system|user|assistant|tool)\b)"
        r"|<\|im_end\|>\s*$|$)",
        re.S,
    ),
    re.compile(
        r"<\|start_header_id\|>user<\|end_header_id\|>\n*(.*?)"
        r"(?:<\|eot_id\|>(?=<\|start_header_id\|>|\s*$)|$)",
        re.S,
    ),
    re.compile(
        r"\[INST\]((?:(?!\[INST\]).)*?)(?:\[/INST\](?!(?:(?!\[INST\]).)*\[/INST\])|$)", re.S
    ),
    re.compile(
        r"(?:^|(?<=\s)|(?<=>))USER:((?:(?!(?<=\s)USER:).)*?)"
        r"(?:ASSISTANT:(?!(?:(?!(?<=\s)USER:).)*ASSISTANT:)|$)",
        re.S,
    ),
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
    """The question of a user turn: without media labels, media markers and the template's
    special tokens around each marker (``<|vision_start|>`` ... ``<|vision_end|>``). Special-token
    strings elsewhere are the client's own text and stay."""
    turn = _MEDIA_LABEL_RE.sub("", turn)
    if specials:
        # One on each side: the template's own (Qwen's vision start/end pair), not the client's.
        around = "(?:" + "|".join(re.escape(s) for s in specials) + ")?"
        turn = re.sub(around + r"\x00\d+\x00" + around, " ", turn)
    return _MARK_RE.sub(" ", turn).strip()


@functools.lru_cache(maxsize=8)
def _plain_text_tokenizer(tokenizer: Any) -> Any:
    """A private copy of ``tokenizer`` that reads special-token strings as plain text, or None.

    A copy, because Hugging Face's fast tokenizers implement ``split_special_tokens`` by setting
    a flag on the shared Rust tokenizer: set on vLLM's own instance, it would race with the
    renderer tokenizing another request's chat prompt in another thread.
    """
    try:
        plain = copy.deepcopy(tokenizer)
        plain.encode("<s>", add_special_tokens=False, split_special_tokens=True)
    except Exception:  # a tokenizer without the option: special strings are dropped instead
        return None
    return plain


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    """``text`` as token ids, special-token strings in it read as the text they are."""
    try:
        plain = _plain_text_tokenizer(tokenizer)
    except TypeError:  # an unhashable tokenizer wrapper: no cached copy
        plain = None
    if plain is not None:
        return [
            int(i) for i in plain.encode(text, add_special_tokens=False, split_special_tokens=True)
        ]
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


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
            ids = _encode_text(tokenizer, question) if question else []
            encoded[span] = [i for i in ids if i not in special_ids]
        out.setdefault(modality, []).append(list(encoded[span]))
    return out
