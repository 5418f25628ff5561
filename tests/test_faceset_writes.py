"""Issue 14: xseg set keeps a face file's mode and owner, writes through symlinks, refuses NaN and
non-square masks, cleans its own killed-write temp files, and every write failure is one line;
export refuses a path under a file before working."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from torchsae.cli import main
from torchsae.dfl.meta import load_meta

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
FACE = "dfl_wf_01_xseg256_binary.jpg"


def _face(tmp_path: Path) -> Path:
    path = tmp_path / "faces" / FACE
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / FACE, path)
    return path


def _mask(tmp_path: Path, mask: np.ndarray) -> Path:
    path = tmp_path / "mask.npy"
    np.save(path, mask)
    return path


def _xseg_set(face: Path, mask: Path):
    return CliRunner().invoke(main, ["xseg", "set", str(face), str(mask)])


def test_xseg_set_keeps_mode_and_owner(tmp_path: Path) -> None:
    face = _face(tmp_path)
    os.chmod(face, 0o640)
    as_root = os.geteuid() == 0 if hasattr(os, "geteuid") else False
    if as_root:
        os.chown(face, 1234, 2345)
    result = _xseg_set(face, _mask(tmp_path, np.ones((32, 32), np.float32)))
    assert result.exit_code == 0, result.output
    info = face.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    if as_root:
        assert (info.st_uid, info.st_gid) == (1234, 2345)


def test_xseg_set_writes_through_a_symlink(tmp_path: Path) -> None:
    face = _face(tmp_path)
    link = tmp_path / "link.jpg"
    link.symlink_to(face)
    result = _xseg_set(link, _mask(tmp_path, np.ones((32, 32), np.float32)))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == face
    assert load_meta(face).xseg_mask().shape == (32, 32, 1)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.full((32, 32), np.nan, np.float32), "NaN or infinite"),
        (np.ones((32, 48), np.float32), "square"),
    ],
)
def test_xseg_set_refuses_bad_masks(tmp_path: Path, mask: np.ndarray, expected: str) -> None:
    face = _face(tmp_path)
    before = face.read_bytes()
    result = _xseg_set(face, _mask(tmp_path, mask))
    assert result.exit_code != 0 and expected in result.output and "Traceback" not in result.output
    assert face.read_bytes() == before


def test_xseg_set_removes_temp_files_of_a_killed_write(tmp_path: Path) -> None:
    face = _face(tmp_path)
    stale = face.parent / f".{face.name}.abcd1234.tmp"
    stale.write_bytes(b"half a face")
    other = face.parent / ".other.jpg.abcd1234.tmp"  # another file's: not ours to remove
    other.write_bytes(b"x")
    assert _xseg_set(face, _mask(tmp_path, np.ones((16, 16), np.float32))).exit_code == 0
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize(
    "error", [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left on device")]
)
def test_xseg_set_on_a_read_only_or_full_folder_is_one_line(tmp_path: Path, monkeypatch, error) -> None:
    face = _face(tmp_path)
    before = face.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(*error)

    monkeypatch.setattr("tempfile.mkstemp" if error[0] == errno.EACCES else "os.fsync", fail)
    result = _xseg_set(face, _mask(tmp_path, np.ones((16, 16), np.float32)))
    monkeypatch.undo()
    assert result.exit_code != 0
    assert f"cannot write the face file ({error[1]}); it is unchanged" in result.output
    assert "Traceback" not in result.output
    assert face.read_bytes() == before
    assert [p.name for p in face.parent.iterdir()] == [face.name]


def test_export_under_a_path_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "exports"
    blocker.write_text("not a folder")
    checkpoint = tmp_path / "last.pth"
    checkpoint.write_bytes(b"unused")
    result = CliRunner().invoke(
        main, ["export", "--checkpoint", str(checkpoint), "--output", str(blocker / "model.onnx")]
    )
    assert result.exit_code != 0
    assert f"{blocker} is a file, not a folder" in result.output and "Traceback" not in result.output
