"""Data-loading processes die with their trainer, also when it is killed with ``kill -9``.

Why this is needed: DataLoader workers start from a multiprocessing fork server
(``pipelines.torch_loader._worker_context``). Python hands every process it forks the fork server's
"alive" pipe, so the server never sees the trainer go away while a worker lives, and each worker's own
watchdog only checks that its parent (the server) lives. After ``kill -9`` of the trainer, or a
torchrun worker restart, the server and all workers (hundreds of MB each) stayed forever.

Two ties, both cheap:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the fork server (at preload, see
  :func:`tie_fork_server`) and in each worker: the kernel kills each as soon as its parent dies.
* Everywhere: a daemon thread in each worker polls the trainer's PID once a second and exits the
  worker when it is gone (covers other platforms and the instant between fork and ``prctl``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

from torchsae.process import pid_alive

PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux); True if it did."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_trainer(trainer_pid: int) -> None:
    """Start a daemon thread that ends this process once ``trainer_pid`` no longer exists."""

    def watch() -> None:
        while pid_alive(trainer_pid):
            time.sleep(POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="torchsae-trainer-watch", daemon=True).start()


def tie_worker(trainer_pid: int) -> None:
    """In a data worker: die with the parent (the fork server) and with the trainer."""
    die_with_parent()
    if not pid_alive(trainer_pid):
        os._exit(0)
    watch_trainer(trainer_pid)


def _in_fork_server_preload() -> bool:
    """Whether this import runs inside ``multiprocessing.forkserver.main`` (its preload step)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            return True
        frame = frame.f_back
    return False


def tie_fork_server() -> None:
    """Called at import: inside the fork server's preload, die with the trainer that started it."""
    if _in_fork_server_preload():
        with contextlib.suppress(Exception):
            die_with_parent()


tie_fork_server()
