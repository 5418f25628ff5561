"""One training per run folder: an exclusive lock held for the run's life.

Why: two trainings on one ``--run-dir`` overwrite each other's ``last.pth`` and prune each other's
copies, and both exit 0. The lock is an OS file lock (``filelock``: ``flock`` on POSIX, ``msvcrt`` on
Windows) on ``RUN_DIR/.torchsae.lock``, so the kernel releases it when the holder dies, even by
``kill -9``: a torchrun restart or a plain re-run takes it again. The holder's PID is written beside
it (``.torchsae.lock.pid``) so a refused start can name the process.

Under torchrun only rank 0 writes files, so only rank 0 takes the lock; its verdict is shared with
the other ranks so that every rank of a refused job stops with the same one line.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch

from torchsae.errors import TorchSAEError
from torchsae.process import pid_alive
from torchsae.train.dist import DistInfo

LOCK_NAME = ".torchsae.lock"
PID_NAME = ".torchsae.lock.pid"
LIVE_HOLDER_WAIT_S = 0.5  # a live holder is another run: refuse at once
DEAD_HOLDER_WAIT_S = 30.0  # the recorded holder is gone: its children may still be closing the file


class RunLockError(TorchSAEError):
    """Another training holds the run folder."""


def _read_holder(pid_file: Path) -> tuple[int | None, str]:
    """``(pid, 'PID 123 on host')`` from the sidecar, or ``(None, 'an unknown process')``."""
    try:
        fields = pid_file.read_text().split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None, "an unknown process"
    host = fields[1] if len(fields) > 1 else ""
    return pid, f"PID {pid}" + (f" on {host}" if host else "")


def check_run_dir(run_dir: Path) -> None:
    """A one-line error for a ``--run-dir`` that cannot be a run folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TorchSAEError(f"{run_dir}: --run-dir is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TorchSAEError(f"{run_dir}: cannot create the run folder ({exc.strerror or exc})") from exc


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block, or raise RunLockError naming the holder."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    pid_file = run_dir / PID_NAME
    lock = FileLock(str(run_dir / LOCK_NAME))
    pid, _ = _read_holder(pid_file)
    wait = DEAD_HOLDER_WAIT_S if pid is not None and pid != os.getpid() and not pid_alive(pid) else 0
    try:
        lock.acquire(timeout=max(wait, LIVE_HOLDER_WAIT_S))
    except Timeout:
        _, holder = _read_holder(pid_file)
        raise RunLockError(
            f"{run_dir}: another training is using this run folder ({holder}); "
            "stop it first or choose another --run-dir"
        ) from None
    except OSError as exc:
        raise TorchSAEError(
            f"{run_dir / LOCK_NAME}: cannot lock the run folder ({exc.strerror or exc})"
        ) from exc
    try:
        with contextlib.suppress(OSError):  # the PID is for the message only: never fatal
            pid_file.write_text(f"{os.getpid()} {socket.gethostname()}\n")
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if _read_holder(pid_file)[0] == os.getpid():
                pid_file.unlink()
        lock.release()


@contextlib.contextmanager
def hold_run_folder(info: DistInfo, run_dir: str | Path) -> Iterator[None]:
    """Rank 0 holds the lock; every rank learns whether it got it (one all-reduce under torchrun)."""
    error: TorchSAEError | None = None
    with contextlib.ExitStack() as stack:
        if info.is_main:
            try:
                stack.enter_context(run_folder_lock(run_dir))
            except TorchSAEError as exc:
                error = exc
        if info.distributed:
            failed = torch.tensor([1 if error is not None else 0], device=info.device)
            torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX)
            if error is None and int(failed.item()):
                raise RunLockError(f"{run_dir}: rank 0 could not lock the run folder (see its message)")
        if error is not None:
            raise error
        yield
