# SPDX-License-Identifier: Apache-2.0
"""The demo-checkpoint builder: validation, families, files, configs, determinism, caching.

No vLLM here (tests/vllm/test_demo_models_load.py loads the checkpoints in a real engine).
A tiny build takes a few seconds; the shared ``demo_model_dir`` fixture (tests/conftest.py)
builds each arch once per session.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mipruner_vllm.demo_model import (
    BUILDER_VERSION,
    DEMO_ARCHS,
    DEMO_SIZES,
    build_demo_model,
    demo_cache_root,
    ensure_demo_model,
)
from mipruner_vllm.demo_model.cache import COMPLETE_MARKER, build_once
from mipruner_vllm.demo_model.families import FAMILIES
from mipruner_vllm.demo_model.tokenizer import QWEN_TOKENS, build_tokenizer
from mipruner_vllm.families import FAMILIES as REGISTRY

pytestmark = pytest.mark.unit

QWEN = tuple(key for key, family in REGISTRY.items() if family.mrope)
QWEN3_5 = ("qwen3_5", "qwen3_5_moe")
COMMON_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "mipruner_demo.json",
)
_MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}],
    }
]
_VICUNA_SYSTEM = "A chat between a curious human and an artificial intelligence assistant. "


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def checkpoint_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint directory, keyed by relative path."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _mid_parts(arch: str):
    """Config and processor of the ``mid`` size, without building its weights."""
    family = FAMILIES[arch]
    size = family.sizes["mid"]
    tokenizer = build_tokenizer(family.tokens)
    config = family.make_config(family, size, tokenizer)
    return config, family.make_processor(family, size, tokenizer, config)


def _weight_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        return list(handle.keys())


# --- validation --------------------------------------------------------------------------------


def test_archs_and_sizes() -> None:
    assert DEMO_ARCHS == (
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "qwen3_5",
        "qwen3_5_moe",
        "llava",
        "llava_next",
    )
    assert DEMO_SIZES == ("tiny", "mid")
    # Every family record has both sizes and names its own arch.
    for arch, family in FAMILIES.items():
        assert family.arch == arch
        assert set(family.sizes) == set(DEMO_SIZES)


@pytest.mark.parametrize("call", [build_demo_model, None])
def test_unknown_arch_names_allowed_values(call, tmp_path: Path) -> None:
    allowed = "qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5, qwen3_5_moe, llava, llava_next"
    with pytest.raises(ValueError, match=allowed):
        if call is None:
            ensure_demo_model("gpt2", cache_dir=tmp_path)
        else:
            call("gpt2", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written before validation


def test_unknown_size_names_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny, mid"):
        build_demo_model("qwen2_vl", tmp_path / "x", size="huge")
    with pytest.raises(ValueError, match="tiny, mid"):
        ensure_demo_model("llava", "large", cache_dir=tmp_path)


# --- contents ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", DEMO_ARCHS)
def test_files_and_config(arch: str, demo_model_dir) -> None:
    from transformers import AutoTokenizer

    path = demo_model_dir(arch)
    for name in COMMON_FILES:
        assert (path / name).is_file(), name
    config = _config(path)
    text = config["text_config"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    # vocab matches the tokenizer exactly: no sampled id can fall outside it.
    assert text["vocab_size"] == len(tokenizer)
    # CPU attention needs head_dim >= 32.
    assert text.get("head_dim", text["hidden_size"] // text["num_attention_heads"]) == 32
    assert config["dtype"] == "bfloat16"
    processor = json.loads((path / "processor_config.json").read_text())
    assert "image_processor" in processor
    # The question becomes several ordinary tokens, not bytes.
    assert len(tokenizer.tokenize("What is in this image?")) == 6
    if arch in QWEN:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS.special_tokens}
        assert config["image_token_id"] == ids["<|image_pad|>"] == 6
        assert config["video_token_id"] == ids["<|video_pad|>"] == 7
        assert config["vision_start_token_id"] == ids["<|vision_start|>"] == 3
        assert config["vision_end_token_id"] == ids["<|vision_end|>"] == 4
        assert config["eos_token_id"] == ids["<|im_end|>"] == 2
        rope = text["rope_parameters"]
        # The sections sum to half the rotary dims (Qwen3.5 rotates a quarter of head_dim).
        assert sum(rope["mrope_section"]) == 32 * rope.get("partial_rotary_factor", 1.0) // 2
        assert "video_processor" in processor
        prompt = tokenizer.apply_chat_template(
            _MESSAGES, add_generation_prompt=True, tokenize=False
        )
        assert prompt == (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>What is in this image?<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert (
            "<|vision_start|><|video_pad|><|vision_end|>"
            in (path / "chat_template.jinja").read_text()
        )
    else:
        assert config["image_token_index"] == tokenizer.convert_tokens_to_ids("<image>") == 4
        keys = _weight_keys(path)
        # vLLM's loader wants the published layout of the CLIP tower.
        assert any("vision_tower.vision_model.embeddings." in k for k in keys)
        assert not any("vision_tower.embeddings." in k for k in keys)
        prompt = tokenizer.apply_chat_template(
            _MESSAGES, add_generation_prompt=True, tokenize=False
        )
        prefix = "" if arch == "llava" else _VICUNA_SYSTEM
        assert prompt == prefix + "USER: <image>\nWhat is in this image? ASSISTANT:"
    if arch == "qwen2_5_vl":
        assert config["vision_config"]["fullatt_block_indexes"] == [1]
    if arch == "qwen3_vl":
        assert config["vision_config"]["deepstack_visual_indexes"] == [0, 1]
    if arch in QWEN3_5:
        # Hybrid LLM: both layer kinds; vLLM's CPU Gated DeltaNet kernels need dims 64 or 128.
        assert set(text["layer_types"]) == {"linear_attention", "full_attention"}
        assert text["linear_key_head_dim"] in (64, 128)
        assert text["linear_value_head_dim"] in (64, 128)
        assert "deepstack_visual_indexes" not in config["vision_config"]
        assert config["vision_config"]["out_hidden_size"] == text["hidden_size"]
        assert ("num_experts" in text) == (arch == "qwen3_5_moe")
    if arch == "llava_next":
        assert config["image_grid_pinpoints"]
        assert any(k.endswith("image_newline") for k in _weight_keys(path))


def _visual_tokens(processor, arch: str, side: int) -> int:
    from PIL import Image

    image = Image.new("RGB", (side, side), (120, 30, 200))
    placeholder = (
        "<image>" if arch.startswith("llava") else "<|vision_start|><|image_pad|><|vision_end|>"
    )
    token = "<image>" if arch.startswith("llava") else "<|image_pad|>"
    out = processor(
        text=[placeholder + "What is in this image?"], images=[image], return_tensors="pt"
    )
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    return int((out["input_ids"][0] == token_id).sum())


@pytest.mark.parametrize(
    ("arch", "side", "tokens"),
    [
        ("qwen2_vl", 56, 4),
        ("qwen2_vl", 112, 16),
        ("qwen2_vl", 448, 16),  # capped by max_pixels
        ("qwen2_5_vl", 84, 9),
        ("qwen3_vl", 64, 4),
        ("qwen3_vl", 128, 16),
        ("qwen3_5", 64, 4),
        ("qwen3_5", 128, 16),
        ("qwen3_5_moe", 128, 16),
        ("llava", 200, 16),
        ("llava_next", 56, 24),
    ],
)
def test_tiny_visual_token_counts(arch: str, side: int, tokens: int, demo_model_dir) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(demo_model_dir(arch))
    assert _visual_tokens(processor, arch, side) == tokens


@pytest.mark.parametrize(
    ("arch", "tokens"),
    [("qwen2_vl", 1024), ("qwen2_5_vl", 1024), ("qwen3_vl", 784), ("qwen3_5", 784)],
)
def test_mid_processor_uses_real_pixel_limits(arch: str, tokens: int) -> None:
    # Only the processor: building the mid weights takes about a minute.
    config, processor = _mid_parts(arch)
    assert _visual_tokens(processor, arch, 896) == tokens
    assert config.text_config.hidden_size == 1536
    assert config.text_config.num_hidden_layers == 8


def test_mid_qwen3_5_is_three_linear_layers_per_full_layer() -> None:
    config, _ = _mid_parts("qwen3_5")
    text = config.text_config
    assert text.layer_types == ["linear_attention"] * 3 + ["full_attention"] + (
        ["linear_attention"] * 3 + ["full_attention"]
    )
    assert (text.head_dim, text.linear_key_head_dim, text.linear_value_head_dim) == (256, 128, 128)


# --- determinism and caching ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_5", "llava_next"])
def test_build_is_deterministic(arch: str, tmp_path: Path, demo_model_dir) -> None:
    fresh = build_demo_model(arch, tmp_path / "again")
    first, second = checkpoint_digest(demo_model_dir(arch)), checkpoint_digest(fresh)
    assert first == second
    assert "model.safetensors" in first


def test_ensure_demo_model_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIPRUNER_CACHE_DIR", str(tmp_path))
    first = ensure_demo_model("qwen2_vl")
    assert first == tmp_path / f"qwen2_vl-tiny-v{BUILDER_VERSION}"
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_demo_model("qwen2_vl") == first
    assert weights.stat().st_mtime_ns == stamp  # served from the cache, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temp leftovers


def test_build_once_writes_beside_then_renames(tmp_path: Path) -> None:
    final = tmp_path / "x-tiny-v9"
    calls: list[Path] = []

    def write(out: Path) -> None:
        calls.append(out)
        assert not final.exists()  # never written in place
        (out / COMPLETE_MARKER).write_text("{}")

    assert build_once(final, write) == final
    assert build_once(final, write) == final
    assert len(calls) == 1 and calls[0].parent == tmp_path and calls[0] != final
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_build_once_lost_race(tmp_path: Path) -> None:
    """Another builder finishes first: ours is discarded and the winner's is returned."""
    final = tmp_path / "llava-tiny-v9"

    def racing(out: Path) -> None:
        (out / "mine").write_text("x")
        final.mkdir()
        (final / COMPLETE_MARKER).write_text("{}")
        (final / "theirs").write_text("x")

    assert build_once(final, racing) == final
    assert (final / "theirs").exists() and not (final / "mine").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "q-tiny-v9", broken)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MIPRUNER_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert demo_cache_root() == tmp_path / ".cache" / "mipruner-vllm" / "demo-models"
    monkeypatch.setenv("MIPRUNER_CACHE_DIR", str(tmp_path / "c"))
    assert demo_cache_root() == tmp_path / "c"
    assert demo_cache_root(tmp_path / "d") == tmp_path / "d"


def test_cli_demo_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mipruner_vllm.cli import app

    result = CliRunner().invoke(
        app, ["demo-model", "--arch", "llava", "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    bad = CliRunner().invoke(app, ["demo-model", "--arch", "nope", "--out", str(tmp_path / "n")])
    assert bad.exit_code != 0
