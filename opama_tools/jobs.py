"""Shared plumbing of the batch commands (prepare, caption, crop): stop requests and worker processes.

* :func:`stop_raises`: in the main thread, SIGTERM raises :class:`Terminated` (a
  ``BaseException``, so per-file ``except Exception`` never swallows it); Ctrl-C raises
  ``KeyboardInterrupt`` as usual. The batch then unwinds (atomic writes remove their temp
  file), records what finished and returns ``interrupted`` = ``"SIGTERM"`` / ``"SIGINT"``.
  With ``deferred=True`` SIGTERM is only recorded and :func:`check_stop`, called by the batch
  loop between files, raises it: an exception raised asynchronously inside a library call
  can leave a half-built object whose finaliser prints a traceback (imageio's Pillow writer
  did, when SIGTERM landed in its constructor).
* :func:`stop_exit_code`: 143 for SIGTERM, 130 for SIGINT (the shell's ``128 + signal``).
* :func:`die_with_parent`: called in a worker process, makes it end when its parent dies,
  even by SIGKILL: Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` plus a watchdog thread
  polling the parent pid (other systems, or a parent that died before the call).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from opama_model.fileio import (  # noqa: F401 (re-exported)
    Terminated,
    check_stop,
    stop_exit_code,
    stop_name,
    stop_raises,
)

__all__ = ["NoInputsError", "Terminated", "stop_raises", "check_stop", "stop_exit_code", "die_with_parent", "RESUME_HINT"]

RESUME_HINT = "re-run the same command to finish (finished outputs are kept)"


class NoInputsError(ValueError):
    """The input folder holds nothing the command can work on (every batch command: exit 2)."""


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM, poll_s: float = 0.5) -> None:
    """Make this (worker) process receive ``sig`` when ``parent_pid`` dies.

    Linux: ``prctl(PR_SET_PDEATHSIG)``. Everywhere: a daemon thread checks every ``poll_s``
    seconds that the parent pid is unchanged and sends ``sig`` to this process otherwise
    (this also covers a parent that died before the ``prctl``). The worker's own ``sig``
    handler decides how to stop (finish the commit in progress, remove its temp file).
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), sig)
                time.sleep(5.0)
                os._exit(128 + int(sig))  # the handler did not end the process: force it
            time.sleep(poll_s)

    threading.Thread(target=watch, name="opama-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # died before prctl took effect
        os.kill(os.getpid(), sig)
