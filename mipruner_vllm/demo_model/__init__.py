# SPDX-License-Identifier: Apache-2.0
"""Deterministic, randomly initialised demo checkpoints that vLLM loads offline.

Why: there is no model hub on developer machines or in CI, yet tests, benchmarks and the
server's embedded default need real checkpoint directories of every supported family. This
package writes one from scratch: ``config.json`` + ``model.safetensors`` (seeded random weights,
built with the transformers model classes), a byte-level BPE tokenizer trained on a fixed
built-in corpus plus the family's special tokens (:mod:`.tokenizer`), the family's chat template
(:mod:`.templates`) and ``processor_config.json`` (image and, for the Qwen family, video
processor). The families and their ``tiny`` / ``mid`` sizes are data (:mod:`.families`); the
cache is :mod:`.cache`. All weights are bf16.

Feeding video to vLLM 0.32 on CPU (no torchcodec): ``multi_modal_data={"video": (frames,
metadata)}`` with ``frames`` a (T, H, W, 3) uint8 array and ``metadata`` a dict with ``fps``,
``duration``, ``total_num_frames``, ``frames_indices``, ``video_backend`` and
``do_sample_frames=False`` (Qwen2.5-VL, Qwen3-VL and Qwen3.5 reject bare arrays); or in chat
form a ``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`` part, which
vLLM decodes with OpenCV.

CLI: ``mipruner-vllm demo-model --arch qwen3_5 --out DIR [--size tiny|mid]``.

One more checkpoint is *trained*, not random: ``qwen2_5_vl`` at the ``tiny`` shapes, trained on
the coloured-shapes task of :mod:`.task` by the recipe in :mod:`.train` and shipped in the
package (``trained/qwen2_5_vl``, :data:`TRAINED_SHA256`). It is what ``mipruner-vllm serve``
serves when no model is given (``ensure_demo_model("qwen2_5_vl", "trained")``), so the default
server answers questions about the task's images correctly. ``mipruner-vllm demo-train --out
DIR`` reproduces it.

The same ``(arch, size)`` always gives the same bytes (seeded init, deterministic tokenizer
training, fixed templates), so checkpoints can be cached by name (:func:`ensure_demo_model`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mipruner_vllm.demo_model.builders import SEED, write_weights
from mipruner_vllm.demo_model.cache import COMPLETE_MARKER, build_once, demo_cache_root
from mipruner_vllm.demo_model.families import FAMILIES
from mipruner_vllm.demo_model.tokenizer import build_tokenizer

__all__ = [
    "BUILDER_VERSION",
    "DEMO_ARCHS",
    "DEMO_SIZES",
    "TRAINED_SHA256",
    "TRAINED_SIZE",
    "build_demo_model",
    "demo_cache_root",
    "ensure_demo_model",
    "trained_demo_model",
    "write_checkpoint",
]

# Bump whenever the bytes a build writes change: it is part of the cache directory name, so a
# stale cached checkpoint is never served by a newer builder.
BUILDER_VERSION = 2

DEMO_ARCHS: tuple[str, ...] = tuple(FAMILIES)
DEMO_SIZES: tuple[str, ...] = ("tiny", "mid")


#: The size name of the trained checkpoint (not a family size: it is shipped, not built).
TRAINED_SIZE = "trained"
#: SHA-256 of the shipped trained weights (``model.safetensors``), as ``demo-train`` wrote them.
TRAINED_SHA256 = "0519a21ad3b1d036351e464e3ed2bd1ce48d6e1f84290f730e8a4a5dc337ac9d"
_TRAINED_ROOT = Path(__file__).with_name("trained")


def trained_demo_model(arch: str = "qwen2_5_vl") -> Path:
    """The shipped trained checkpoint of ``arch`` (only ``qwen2_5_vl`` is trained)."""
    path = _TRAINED_ROOT / arch
    if not (path / COMPLETE_MARKER).is_file():
        trained = sorted(p.name for p in _TRAINED_ROOT.glob("*/" + COMPLETE_MARKER))
        raise ValueError(f"no trained demo checkpoint for {arch!r}; trained: {', '.join(trained)}")
    return path


def _validate(arch: str, size: str) -> None:
    if arch not in FAMILIES:
        raise ValueError(f"unknown demo arch {arch!r}; allowed: {', '.join(DEMO_ARCHS)}")
    if size not in DEMO_SIZES:
        raise ValueError(f"unknown demo size {size!r}; allowed: {', '.join(DEMO_SIZES)}")


def write_checkpoint(arch: str, size: str, out: Path) -> None:
    """Write every file of the ``(arch, size)`` checkpoint into the existing directory ``out``."""
    family = FAMILIES[arch]
    spec = family.sizes[size]
    tokenizer = build_tokenizer(family.tokens)
    config = family.make_config(family, spec, tokenizer)
    write_weights(family, config, out)
    for fix in family.post_save:
        fix(out)
    family.make_processor(family, spec, tokenizer, config).save_pretrained(out)
    # A record of what this is, for humans and for the cache (never read by vLLM).
    info = {
        "builder": "mipruner_vllm.demo_model",
        "builder_version": BUILDER_VERSION,
        "arch": arch,
        "size": size,
        "seed": SEED,
        "random_weights": True,
    }
    (out / COMPLETE_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    # save_pretrained and mkdtemp create some entries owner-only; a cached checkpoint is shared
    # (e.g. with a container user), so make everything world-readable.
    out.chmod(0o755)
    for item in out.iterdir():
        item.chmod(0o644)


def build_demo_model(arch: str, out: str | os.PathLike[str], size: str = "tiny") -> Path:
    """Write the ``(arch, size)`` demo checkpoint into ``out`` and return its path.

    ``out`` is created if missing; existing files of the same names are overwritten. Raises
    ``ValueError`` for an unknown ``arch`` (one of :data:`DEMO_ARCHS`) or ``size`` (one of
    :data:`DEMO_SIZES`).
    """
    _validate(arch, size)
    path = Path(out).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    write_checkpoint(arch, size, path)
    return path


def ensure_demo_model(
    arch: str, size: str = "tiny", cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return the cached ``(arch, size)`` checkpoint, building it on first use.

    The checkpoint lives in ``<root>/<arch>-<size>-v<BUILDER_VERSION>`` (root from
    :func:`demo_cache_root`) and is built atomically (:func:`.cache.build_once`), so concurrent
    builders never see a half-written checkpoint. ``size="trained"`` returns the shipped trained
    checkpoint (:func:`trained_demo_model`); nothing is built or cached for it.
    """
    if size == TRAINED_SIZE:
        return trained_demo_model(arch)
    _validate(arch, size)
    final = demo_cache_root(cache_dir) / f"{arch}-{size}-v{BUILDER_VERSION}"
    return build_once(final, lambda tmp: write_checkpoint(arch, size, tmp))
