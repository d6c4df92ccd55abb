# SPDX-License-Identifier: Apache-2.0
"""The supervisor of ``mipruner-vllm serve``: a small process that never imports vLLM.

Why: vLLM's engine runs in processes of its own, and a server killed with SIGKILL (or dying of an
error) leaves them running, with the metrics directory behind. The supervisor starts the server
(:func:`mipruner_vllm.server.launcher.serve`) as a child in its own process group and:

* passes SIGTERM / SIGINT / SIGHUP on, after marking the stop (:func:`.lifecycle.note_stopping`):
  every API-server process then refuses new requests and fails readiness while vLLM drains the
  requests in flight for up to ``--shutdown-timeout`` seconds (vLLM's flag; 0, its default,
  aborts them at once);
* gives the server that long plus :data:`TEARDOWN_GRACE_S` to exit, then kills its process group;
* when the server exits, kills whatever is left in its group, removes the metrics and state
  directories, and exits with the server's status: 0 after a requested stop the server completed
  in time, :data:`~.lifecycle.ENGINE_DIED_STATUS` when vLLM's engine died (noted by whichever
  API-server process saw it), 137 when the stop overran its grace and the group was killed,
  128 + N for a signal N otherwise;
* if the supervisor itself is killed (even with SIGKILL), the kernel sends the server SIGTERM
  (``PR_SET_PDEATHSIG``) and the server's own watch (:func:`watch_supervisor`) kills its group
  :data:`ORPHAN_GRACE_S` later if vLLM's shutdown has not finished by then.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mipruner_vllm.server import lifecycle
from mipruner_vllm.server.flags import check_pruning_flags

#: Marks the server process the supervisor starts.
SUPERVISED_ENV = "_MIPRUNER_SERVE_SUPERVISED"
#: The metrics directory the supervisor made, removed by whichever of the two processes exits last.
OWNED_METRICS_DIR_ENV = "_MIPRUNER_OWNED_METRICS_DIR"
#: vLLM media connector with the media-URL policy (``mipruner_vllm.server.media``).
MEDIA_CONNECTOR = "mipruner"
#: Seconds a stopping server gets beyond vLLM's drain (``--shutdown-timeout``) to close its
#: connections and tear its engine down before the supervisor kills its process group.
TEARDOWN_GRACE_S = 90.0
#: Seconds an orphaned server (its supervisor killed) gets to finish vLLM's shutdown.
ORPHAN_GRACE_S = 5.0
#: The exit status when the supervisor had to kill the server (128 + SIGKILL).
KILLED_STATUS = 128 + signal.SIGKILL
_PR_SET_PDEATHSIG = 1

logger = logging.getLogger("vllm.mipruner.server")


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


def shutdown_timeout_s(argv: list[str]) -> float:
    """vLLM's ``--shutdown-timeout`` (seconds its engine drains the requests in flight)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--shutdown-timeout", "--shutdown_timeout", type=float, default=0.0)
    known, _ = parser.parse_known_args(argv)
    return max(known.shutdown_timeout, 0.0)


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


def _remove_own_directories() -> None:
    for name in (OWNED_METRICS_DIR_ENV, lifecycle.STATE_DIR_ENV):
        path = os.environ.get(name)
        if path:
            shutil.rmtree(path, ignore_errors=True)


def watch_supervisor() -> None:
    """In the server process: if the supervisor dies, end this process group soon after.

    The parent-death SIGTERM starts vLLM's own shutdown; this thread bounds it, so nothing of the
    server outlives a killed supervisor by more than :data:`ORPHAN_GRACE_S` (clients of requests
    still open see their connection close). Once orphaned, the server removes the directories
    the supervisor would have removed (while the supervisor lives, it reads the state directory
    after the server exits, so the server leaves it alone then), and arms ``SIGALRM`` (default
    action: terminate) as well, because a daemon thread cannot run once the interpreter is
    finalizing, which on a loaded machine can take longer than the grace.
    """
    supervisor = os.getppid()

    def remove_if_orphaned() -> None:
        if os.getppid() != supervisor:
            _remove_own_directories()

    # The parent-death SIGTERM can end this process (vLLM's handler, then interpreter exit)
    # before the watch below polls again: the exit path removes the directories too.
    atexit.register(remove_if_orphaned)

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(0.1)
        _remove_own_directories()
        signal.alarm(int(ORPHAN_GRACE_S) + 1)
        time.sleep(ORPHAN_GRACE_S)
        logger.warning("mipruner: supervisor gone and shutdown unfinished; killing the server")
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="mipruner-supervisor-watch", daemon=True).start()


def _server_environment(metrics_dir: Path, made_here: bool, state_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env[SUPERVISED_ENV] = "1"
    env[lifecycle.STATE_DIR_ENV] = state_dir
    env.setdefault("VLLM_MEDIA_CONNECTOR", MEDIA_CONNECTOR)
    # A shared server tries a client's media URL once, within the fetch timeout (security.md).
    env.setdefault("VLLM_MEDIA_FETCH_MAX_RETRIES", "1")
    if made_here:
        env[OWNED_METRICS_DIR_ENV] = str(metrics_dir)
    return env


class _StopForwarder:
    """Signal handler: mark the stop, pass the signal on, remember when the first one came."""

    def __init__(self, child: subprocess.Popen) -> None:
        self.child = child
        self.since: float | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.since is None:
            self.since = time.monotonic()
            lifecycle.note_stopping()
        try:
            os.kill(self.child.pid, signum)
        except ProcessLookupError:
            pass


def _wait(child: subprocess.Popen, stop: _StopForwarder, grace_s: float) -> tuple[int, bool]:
    """The server's return code, and whether the supervisor had to kill it."""
    killed = False
    while True:
        try:
            return child.wait(timeout=1.0), killed
        except subprocess.TimeoutExpired:
            if stop.since is not None and not killed and time.monotonic() - stop.since > grace_s:
                logger.warning(
                    "mipruner: the server did not stop within %.0f s; killing it", grace_s
                )
                _kill_group(child.pid)
                killed = True


def _exit_status(returncode: int, stop_requested: bool, killed: bool) -> int:
    if killed:
        return KILLED_STATUS
    if not stop_requested and lifecycle.failed_while_serving(returncode):
        return lifecycle.ENGINE_DIED_STATUS
    if stop_requested and returncode == lifecycle.ENGINE_DIED_STATUS:
        # vLLM stops its engine first when asked to stop, so at exit the server cannot tell a
        # requested stop from a death; the supervisor can: it passed the request on.
        return 0
    return returncode if returncode >= 0 else 128 - returncode


def supervise(argv: list[str]) -> int:
    """Run the server as a child process and clean up after it, whatever ends it."""
    check_pruning_flags(argv)  # bad flags: status 2 in a second, before any process starts
    made_here = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = prepare_metrics_dir()
    state_dir = tempfile.mkdtemp(prefix="mipruner-state-")
    os.environ[lifecycle.STATE_DIR_ENV] = state_dir  # for note_stopping in this process
    child = subprocess.Popen(
        [sys.executable, "-m", "mipruner_vllm.server.launcher", *argv],
        env=_server_environment(metrics_dir, made_here, state_dir),
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),  # noqa: PLW1509 (no threads)
    )
    stop = _StopForwarder(child)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    returncode, killed = _wait(child, stop, shutdown_timeout_s(argv) + TEARDOWN_GRACE_S)
    _kill_group(child.pid)  # engine processes the server left behind, if any
    status = _exit_status(returncode, stop.since is not None, killed)
    shutil.rmtree(state_dir, ignore_errors=True)
    if made_here:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
