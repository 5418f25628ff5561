"""Atomic file writes: the one implementation every writer in TorchSAE uses.

Users' facesets and checkpoints are precious. A file we write first goes to a temporary name in the
same folder, is flushed and fsynced, and only then renamed over the target (``os.replace`` is atomic
on POSIX and Windows). A crash, a full disk or an exception while writing leaves the old file
byte-identical and no temporary file behind.

Portability: everything here runs on Linux, macOS and Windows. Two things differ on Windows and are
handled here: a file that another process holds open cannot be replaced for a moment (``os.replace``
raises PermissionError; we retry for up to :data:`REPLACE_RETRY_S` seconds), and a folder cannot be
opened to fsync it (:func:`fsync_dir` is best effort), nor can a file opened read-only be fsynced
(:func:`fsync_file` opens it for writing).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

REPLACE_RETRY_S = 2.0  # Windows only: how long a replace waits for a reader to close the target
_WINDOWS = sys.platform == "win32"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit fsync and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'wb' and 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX (Windows has only the read-only bit, and mkstemp leaves it off)
            os.fchmod(fd, _target_mode(path))
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}  # the same bytes everywhere
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _target_mode(path: Path) -> int:
    """Keep an existing file's permissions; a new file gets 0666 less the umask, like open() would.

    mkstemp creates 0600 files, which would silently make configs and results private.
    """
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def replace(source: str | Path, target: str | Path) -> None:
    """``os.replace``; on Windows, retried while another process briefly holds ``target`` open."""
    deadline = time.monotonic() + REPLACE_RETRY_S
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if not _WINDOWS or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk (portable: Windows needs a handle opened for writing)."""
    binary = getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, os.O_RDWR | binary)
    except PermissionError:  # a read-only file (umask): POSIX fsyncs it through a read-only handle too
        fd = os.open(path, os.O_RDONLY | binary)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort: not every platform lets a folder be opened (Windows
    refuses). The rename is atomic everywhere; only its durability across a power cut is then left to
    the file system."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
