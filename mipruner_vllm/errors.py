# SPDX-License-Identifier: Apache-2.0
"""The project's exceptions: one root, so callers can catch everything of ours at once.

Every exception class of mipruner-vllm derives from :class:`MiprunerError` (a unit test checks
the whole package), and also from the builtin it refines (``ValueError`` for a refused value,
``RuntimeError`` for a state of the machine), so existing ``except ValueError`` still works.
The classes that belong to one layer live there: ``RequestRefused`` (``server/policy.py``),
``MediaURLRefused`` (``server/media.py``), ``LaunchConfigurationError``
(``integration/launch.py``), ``DatasetError`` (``evaluation/data.py``). The kernels, pure ops
on tensors, raise builtin ``ValueError`` for bad launch arguments and import nothing of ours.
"""

from __future__ import annotations


class MiprunerError(Exception):
    """Root of every error raised by mipruner-vllm."""


class PruningParameterError(MiprunerError, ValueError):
    """A pruning argument is outside its allowed values.

    ``field`` names the argument as the user spells it (``keep_ratio``, ``mi_tau``...), so the
    server can return it as the OpenAI error ``param`` and the message can be shown as is.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PruningInputError(MiprunerError, ValueError):
    """The embeddings handed to a selection are unusable (shape, dtype, NaN/inf)."""


class KernelUnavailableError(MiprunerError, RuntimeError):
    """A backend was forced (``backend="triton"``) but cannot run on this input or machine."""


class UnsupportedVllmError(MiprunerError, RuntimeError):
    """The installed vLLM is outside the range this plugin supports."""
