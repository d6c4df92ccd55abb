# SPDX-License-Identifier: Apache-2.0
"""The "MI-Pruner" flags of ``mipruner-vllm serve``: declared, parsed, validated, exported.

One flag per declared pruning parameter (``config.PRUNING_PARAMETERS``: ``--keep-ratio``...) and
one per server setting of the request policy (:data:`SERVER_FLAGS`). They are validated by the
settings object and the parameter rules of :mod:`mipruner_vllm.params` (the same checks and
messages a request gets, named by flag here), then exported as ``MIPRUNER_*`` so vLLM's engine and
worker processes, which inherit the environment, see the same values. No vLLM import: the
supervisor checks the flags with this module in a second, before any process starts.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from mipruner_vllm.config import PARAMETERS_BY_NAME, PRUNING_PARAMETERS, MiprunerSettings

#: Flags of settings that are not pruning parameters: flag -> (settings field, type, help).
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

#: Every MI-Pruner flag: flag -> (settings field, type, help). The pruning parameters' entries
#: are derived from their declaration; the server settings' are :data:`SERVER_FLAGS`.
PRUNING_FLAGS: dict[str, tuple[str, Any, str]] = {
    **{
        p.flag: (p.name, p.kind, f"Default {p.request}: {p.allowed}. {p.description}")
        for p in PRUNING_PARAMETERS
    },
    **SERVER_FLAGS,
}
_FLAG_OF = {field: flag for flag, (field, _, _) in PRUNING_FLAGS.items()}


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_pruning_args(parser: argparse.ArgumentParser) -> None:
    """Add the "MI-Pruner" group; an absent flag leaves the environment / settings default."""
    group = parser.add_argument_group(
        "MI-Pruner",
        "Server-wide pruning defaults (requests override them per call; also MIPRUNER_* env vars) "
        "and the request policy of a shared endpoint (docs/security.md).",
    )
    for flag, (field, kind, help_text) in PRUNING_FLAGS.items():
        default = MiprunerSettings.model_fields[field].get_default(call_default_factory=True)
        env = f"MIPRUNER_{field.upper()}"
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
        group.add_argument(
            flag,
            dest=f"mipruner_{field}",
            type=_comma_list if kind == "list" else kind,
            metavar=field.split("_")[-1].upper(),
            default=argparse.SUPPRESS,
            help=f"{help_text} [env {env}; default {default}]",
        )


def _validated(given: dict[str, Any]) -> MiprunerSettings:
    """The settings with ``given`` applied, or ``ValueError`` naming the flag.

    The pruning parameters go through :func:`mipruner_vllm.params.resolve_params`, the check a
    request's fields get (ranges, types, one budget at most), so a flag and a request field can
    never be refused for different reasons or in different words.
    """
    from pydantic import ValidationError

    from mipruner_vllm.errors import PruningParameterError
    from mipruner_vllm.params import resolve_params

    server_fields = {k: v for k, v in given.items() if k not in PARAMETERS_BY_NAME}
    try:
        base = MiprunerSettings(**server_fields)
        resolve_params(settings=base, **{k: v for k, v in given.items() if k in PARAMETERS_BY_NAME})
        return MiprunerSettings(**given)
    except PruningParameterError as exc:
        raise ValueError(f"{_FLAG_OF.get(exc.field, exc.field)}: {exc.message}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        raise ValueError(
            f"{_FLAG_OF.get(field, field)}: {error['msg']}, got {error.get('input')!r}"
        ) from None


def export_pruning_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the MI-Pruner flags and export them as ``MIPRUNER_*`` for every process.

    Raises ``ValueError`` naming the flag. Returns the resolved settings as a dict (for the log).
    """
    from mipruner_vllm.config import get_settings

    given = {field: getattr(args, f"mipruner_{field}", None) for field in _FLAG_OF}
    given = {k: v for k, v in given.items() if v is not None}
    settings = _validated(given)
    for field, value in given.items():
        os.environ[f"MIPRUNER_{field.upper()}"] = (
            json.dumps(value) if isinstance(value, list | bool) else str(value)
        )
    # One budget on the command line replaces the other one's environment default.
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
