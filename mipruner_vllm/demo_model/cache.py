# SPDX-License-Identifier: Apache-2.0
"""Where demo checkpoints are cached, and the atomic build-once that fills the cache.

Several processes build and read the same cache at once (parallel test sessions, several servers,
a container sharing the user's cache), so a cached directory is only ever created complete: it is
written in a sibling temporary directory and renamed into place in one step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["COMPLETE_MARKER", "build_once", "demo_cache_root"]

#: The file a finished checkpoint always has; a directory without it is never served.
COMPLETE_MARKER = "mipruner_demo.json"


def demo_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds cached demo checkpoints: ``cache_dir``, else ``$MIPRUNER_CACHE_DIR``,
    else ``~/.cache/mipruner-vllm/demo-models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MIPRUNER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mipruner-vllm" / "demo-models"


def build_once(final: Path, write: Callable[[Path], None]) -> Path:
    """Return ``final``, running ``write(tmp)`` first if it is not there yet.

    ``write`` fills a fresh temporary directory next to ``final`` (and must write
    :data:`COMPLETE_MARKER`), which is then renamed to ``final`` (atomic on POSIX). When two
    builders race, the loser's rename fails, its copy is discarded and the winner's is returned.
    A failed ``write`` leaves nothing behind.
    """
    if (final / COMPLETE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, final)  # fails if another builder got there first
        except OSError:
            if not (final / COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
