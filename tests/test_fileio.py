"""Atomic writes: a failure mid-write leaves the old file byte-identical and no temporary behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from torchsae import fileio
from torchsae.fileio import atomic_open, atomic_write_bytes, atomic_write_text, fsync_dir, fsync_file


def test_write_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_text(target, "two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_exception_inside_leaves_original(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"precious")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_rename_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"precious")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_permissions_follow_umask_or_existing_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "new.txt"
        atomic_write_text(fresh, "x")
        assert fresh.stat().st_mode & 0o777 == 0o644
        private = tmp_path / "private.txt"
        private.write_text("x")
        private.chmod(0o600)
        atomic_write_text(private, "y")
        assert private.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def _flaky_replace(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """os.replace fails ``failures`` times with PermissionError (a reader holds the target on Windows)."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(1)
        if len(calls) <= failures:
            raise PermissionError(13, "The process cannot access the file", str(dst))
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    monkeypatch.setattr(fileio.time, "sleep", lambda s: None)
    return calls


def test_replace_retries_while_windows_holds_the_target(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fileio, "_WINDOWS", True)
    calls = _flaky_replace(monkeypatch, failures=3)
    target = tmp_path / "f.txt"
    atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "new" and len(calls) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_replace_does_not_retry_elsewhere_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fileio, "_WINDOWS", False)
    calls = _flaky_replace(monkeypatch, failures=1)
    target = tmp_path / "f.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(PermissionError):
        atomic_write_text(target, "new")
    assert len(calls) == 1 and target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_text_mode_writes_utf8_with_unix_newlines(tmp_path: Path) -> None:
    target = tmp_path / "t.yaml"
    with atomic_open(target, "w") as handle:
        handle.write("name: Zoë\nnext: line\n")
    assert target.read_bytes() == "name: Zoë\nnext: line\n".encode()


def test_fsync_helpers_accept_read_only_files_and_any_folder(tmp_path: Path) -> None:
    path = tmp_path / "ro.bin"
    path.write_bytes(b"x")
    path.chmod(0o444)
    fsync_file(path)  # root may open it for writing anyway; others fall back to a read-only handle
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # best effort: no error
