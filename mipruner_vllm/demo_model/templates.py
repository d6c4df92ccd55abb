# SPDX-License-Identifier: Apache-2.0
"""Chat templates of the demo checkpoints, one per turn format (fixed: part of the bytes)."""

from __future__ import annotations

__all__ = ["LLAVA_CHAT_TEMPLATE", "LLAVA_NEXT_CHAT_TEMPLATE", "QWEN_CHAT_TEMPLATE"]

# Qwen2-VL's published ChatML template: images become <|vision_start|><|image_pad|><|vision_end|>
# and videos <|vision_start|><|video_pad|><|vision_end|>; the processor expands the pads.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-1.5 (llava-hf) style: "USER: <image>\n<question> ASSISTANT:". Images of a turn come
# first, then its text, as in the published llava-hf template; string content is accepted too.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# LLaVA-NeXT (llava-v1.6-vicuna) uses the same turn format after Vicuna's system line.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ 'A chat between a curious human and an artificial intelligence assistant. ' }}"
    "{% endif %}" + LLAVA_CHAT_TEMPLATE
)
