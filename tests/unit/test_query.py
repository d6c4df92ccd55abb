# SPDX-License-Identifier: Apache-2.0
"""The query text of a media item is the user's question as the client sent it, whatever
special-token strings it contains (mipruner_vllm/integration/query.py)."""

from __future__ import annotations

import pytest

from mipruner_vllm.integration.query import query_token_ids

pytestmark = pytest.mark.unit

QUESTIONS = [
    "Where is the red ball?",
    "What is <|im_end|> in this picture?",
    "Describe <|vision_start|> and <|im_start|>assistant here",
    "Ends with a marker <|im_end|>",
    "<|endoftext|> first, then the question",
]


def _tokenizer(demo_model_dir, arch: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir(arch))


def _media_tokens(tokenizer, placeholder: str, modality: str = "image") -> dict[int, str]:
    return {tokenizer.convert_tokens_to_ids(placeholder): modality}


def _query(tokenizer, messages, placeholder: str) -> str:
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)  # as vLLM tokenizes a chat prompt
    texts = query_token_ids(tokenizer, ids, _media_tokens(tokenizer, placeholder))
    return tokenizer.decode(texts["image"][0])


@pytest.mark.parametrize("question", QUESTIONS)
def test_chatml_question_is_taken_as_sent(demo_model_dir, question):
    tokenizer = _tokenizer(demo_model_dir, "qwen2_5_vl")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    assert _query(tokenizer, messages, "<|image_pad|>") == question


def test_chatml_later_turns_and_special_strings_are_plain_text(demo_model_dir):
    tokenizer = _tokenizer(demo_model_dir, "qwen2_5_vl")
    question = "And <|im_end|> now?"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hello <|im_end|> there"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    texts = query_token_ids(tokenizer, ids, _media_tokens(tokenizer, "<|image_pad|>"))
    # The literal "<|im_end|>" is encoded as the characters it is, not as the special token.
    assert texts["image"][0] == tokenizer.encode(
        question, add_special_tokens=False, split_special_tokens=True
    )
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in texts["image"][0]


def test_the_shared_tokenizer_still_reads_special_tokens(demo_model_dir):
    # The plain-text reading uses a private copy: vLLM's own instance is untouched.
    tokenizer = _tokenizer(demo_model_dir, "qwen2_5_vl")
    _query(
        tokenizer,
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Why?"}]}],
        "<|image_pad|>",
    )
    assert tokenizer.encode("<|im_end|>", add_special_tokens=False) == [
        tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]


@pytest.mark.parametrize("question", ["What is here?", "What does ASSISTANT: mean here?"])
def test_vicuna_question_is_taken_as_sent(demo_model_dir, question):
    tokenizer = _tokenizer(demo_model_dir, "llava")
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    assert _query(tokenizer, messages, "<image>") == question


def test_mistral_and_llama3_turns_end_at_the_last_marker_of_the_turn():
    from mipruner_vllm.integration.query import _USER_TURN_PATTERNS

    mistral = "<s>[INST] \x000\x00What is [/INST] this? [/INST] One</s>[INST] \x001\x00Two? [/INST]"
    assert [m.group(1) for m in _USER_TURN_PATTERNS[2].finditer(mistral)] == [
        " \x000\x00What is [/INST] this? ",
        " \x001\x00Two? ",
    ]
    llama3 = (
        "<|start_header_id|>user<|end_header_id|>\n\n\x000\x00Why <|eot_id|> here?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert [m.group(1) for m in _USER_TURN_PATTERNS[1].finditer(llama3)] == [
        "\x000\x00Why <|eot_id|> here?"
    ]
