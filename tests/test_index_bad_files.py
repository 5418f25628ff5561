"""Issue 14: one bad file never blocks a faceset; a full disk is an error, not a SIGBUS."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from test_loaders_support import make_faceset

import pipelines.index as index_mod
from pipelines.index import SideIndexError, build_index
from pipelines.yaw import estimate_yaw
from torchsae.dfl.meta import load_meta, save_meta


def _reasons(report) -> dict[str, str]:
    return {s["name"]: s["reason"] for s in report.index.skipped}


def test_a_symlink_loop_is_skipped_with_its_reason(tmp_path: Path) -> None:
    make_faceset(tmp_path, 3)
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    report = build_index(tmp_path, 64, "xseg", workers=1, progress=False)
    assert len(report.index) == 3
    reasons = _reasons(report)
    assert "symbolic links" in reasons["loop.jpg"]
    assert "dangling" in reasons["gone.jpg"]


def test_an_empty_stored_xseg_mask_is_skipped(tmp_path: Path) -> None:
    paths = make_faceset(tmp_path, 3)
    meta = load_meta(paths[0])
    meta.xseg_mask_buf = np.zeros(0, np.uint8)
    save_meta(paths[0], meta)
    report = build_index(tmp_path, 64, "xseg", workers=1, progress=False)
    assert len(report.index) == 2 and paths[0].name in _reasons(report)


def test_degenerate_landmarks_are_skipped_and_yaw_survives_them(tmp_path: Path) -> None:
    paths = make_faceset(tmp_path, 3)
    meta = load_meta(paths[1])
    meta.landmarks = np.full((68, 2), 40.0, np.float32)
    save_meta(paths[1], meta)
    report = build_index(tmp_path, 64, "xseg", workers=1, progress=False)
    assert len(report.index) == 2
    assert "degenerate landmarks" in _reasons(report)[paths[1].name]
    assert np.isnan(estimate_yaw(np.full((68, 2), 40.0), 128))


def test_a_full_disk_while_writing_the_index_is_one_error(tmp_path: Path, monkeypatch) -> None:
    make_faceset(tmp_path, 3)
    good = build_index(tmp_path, 64, "xseg", workers=1, progress=False).index
    make_faceset(tmp_path, 4)  # one more face: the index must be rewritten
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "masks.npy" in str(path) and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(
        SideIndexError, match=r"index \(No space left on device\); the previous index is kept"
    ):
        build_index(tmp_path, 64, "xseg", workers=1, progress=False)
    monkeypatch.undo()
    family = index_mod.index_dir(tmp_path, 64, "xseg")
    assert not list(family.glob(".build-*"))
    assert len(index_mod.load_index(tmp_path, 64, "xseg")) == len(good)
