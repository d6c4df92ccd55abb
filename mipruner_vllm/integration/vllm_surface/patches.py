# SPDX-License-Identifier: Apache-2.0
"""What the project changes in vLLM at run time: one mechanism, for names declared as patches.

The only patch today is ``BaseRenderer._process_multimodal_async`` (applied by
``server/hooks.py``): vLLM runs the processor through ``loop.run_in_executor``, which does not
carry ``contextvars``, so the processor could not tell which request an item belongs to. Every
other change to vLLM's behaviour goes through a registry or a flag vLLM offers (model and
processor registration, ``--worker-cls``, ``VLLM_MEDIA_CONNECTOR``), not through this module.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from mipruner_vllm.integration.vllm_surface.declaration import SURFACE_BY_KEY

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class AppliedPatch:
    """A replaced attribute of one vLLM object: logged when applied, undoable."""

    key: str
    target: Any
    attribute: str
    original: Any

    def undo(self) -> None:
        setattr(self.target, self.attribute, self.original)
        PATCHES.pop((id(self.target), self.attribute), None)
        logger.info("mipruner: restored %s", self.key)


#: Patches in force, by (target object, attribute).
PATCHES: dict[tuple[int, str], AppliedPatch] = {}


def apply_patch(key: str, target: Any, replacement: Any) -> AppliedPatch:
    """Replace the declared attribute ``key`` (use ``"patch"``) of ``target``; idempotent.

    Only names declared with use ``"patch"`` in the declaration can be patched, so the
    declaration stays the list of everything the project changes in vLLM.
    """
    name = SURFACE_BY_KEY[key]
    if name.use != "patch":
        raise ValueError(f"{key} is not declared as a patch in the vLLM surface")
    attribute = key.rpartition(".")[2]
    applied = PATCHES.get((id(target), attribute))
    if applied is not None:
        return applied
    applied = AppliedPatch(key, target, attribute, getattr(target, attribute))
    setattr(target, attribute, replacement)
    PATCHES[(id(target), attribute)] = applied
    logger.info("mipruner: replaced %s (%s)", key, name.why)
    return applied
