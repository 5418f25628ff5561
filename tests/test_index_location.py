"""The side index outside the faceset (--index-dir, data.index_dir, TORCHSAE_INDEX_DIR): read-only
facesets can be trained on, two facesets never share an index, and the default place is unchanged.

Tests run as root, which ignores permission bits, so "read-only" is simulated by a plain file named
``.torchsae`` inside the faceset: nothing can create the default index folder there, and the faceset's
listing and bytes must come out unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_loaders_support import make_faceset

from pipelines.index import (
    INDEX_DIR_ENV,
    SIDECAR,
    SideIndexError,
    build_index,
    ensure_index,
    index_dir,
    is_stale,
    load_index,
    sidecar_dir,
)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry of the faceset folder with its content digest (a new file or a change shows)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _read_only_faceset(folder: Path, count: int = 3) -> Path:
    make_faceset(folder, count, size=64)
    (folder / SIDECAR).write_text("in the way: the default index location cannot be created\n")
    return folder


def test_default_location_is_unchanged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(INDEX_DIR_ENV, raising=False)
    make_faceset(tmp_path / "faces", 2, size=64)
    index = build_index(tmp_path / "faces", 32, "xseg", workers=1, progress=False).index
    assert index.directory.parent == tmp_path / "faces" / SIDECAR / "index_r32_xseg"


def test_read_only_faceset_fails_with_a_hint_then_trains_from_index_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(INDEX_DIR_ENV, raising=False)
    faces = _read_only_faceset(tmp_path / "faces")
    before = _snapshot(faces)
    with pytest.raises(SideIndexError, match="--index-dir"):
        build_index(faces, 32, "xseg", workers=1, progress=False)
    report = build_index(faces, 32, "xseg", workers=1, progress=False, index_root=tmp_path / "idx")
    assert len(report.index) == 3 and report.processed == 3
    assert report.index.directory.is_relative_to(tmp_path / "idx")
    assert _snapshot(faces) == before  # nothing was written into the faceset
    # loads, stays incremental and up to date from the same place
    assert not is_stale(faces, 32, "xseg", index_root=tmp_path / "idx")
    again = build_index(faces, 32, "xseg", workers=1, progress=False, index_root=tmp_path / "idx")
    assert again.processed == 0 and again.index.directory == report.index.directory
    assert load_index(faces, 32, "xseg", index_root=tmp_path / "idx").files == report.index.files
    folder = sidecar_dir(faces, tmp_path / "idx")
    assert (folder / "FACESET").read_text().strip() == str(faces.resolve())


def test_environment_variable_sets_the_location(tmp_path: Path, monkeypatch) -> None:
    faces = _read_only_faceset(tmp_path / "faces")
    monkeypatch.setenv(INDEX_DIR_ENV, str(tmp_path / "env_idx"))
    index = ensure_index(faces, 32, "xseg", workers=1, progress=False)
    assert index.directory.is_relative_to(tmp_path / "env_idx")
    # an explicit location wins over the environment
    explicit = ensure_index(faces, 32, "xseg", workers=1, progress=False, index_root=tmp_path / "flag")
    assert explicit.directory.is_relative_to(tmp_path / "flag")


def test_two_facesets_never_share_an_index(tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "aligned", tmp_path / "b" / "aligned"  # same folder name, other path
    make_faceset(one, 2, size=64)
    make_faceset(two, 3, size=64)
    root = tmp_path / "idx"
    first = build_index(one, 32, "xseg", workers=1, progress=False, index_root=root).index
    second = build_index(two, 32, "xseg", workers=1, progress=False, index_root=root).index
    assert sidecar_dir(one, root) != sidecar_dir(two, root)
    assert sidecar_dir(one, root).name.startswith("aligned-")
    assert (len(first), len(second)) == (2, 3)
    assert index_dir(one, 32, "xseg", None, root) != index_dir(two, 32, "xseg", None, root)
    # the same faceset reached through another spelling of its path finds the same index
    assert sidecar_dir(tmp_path / "a" / ".." / "a" / "aligned", root) == sidecar_dir(one, root)


def test_index_command_takes_index_dir(tmp_path: Path, monkeypatch) -> None:
    from torchsae.cli.data import index_cmd

    monkeypatch.delenv(INDEX_DIR_ENV, raising=False)
    faces = _read_only_faceset(tmp_path / "faces")
    before = _snapshot(faces)
    args = [str(faces), "-r", "32", "-j", "1", "-q", "--index-dir", str(tmp_path / "idx")]
    result = CliRunner().invoke(index_cmd, args)
    assert result.exit_code == 0, result.output
    assert "indexed 3 files" in result.output and str(tmp_path / "idx") in result.output
    assert _snapshot(faces) == before
    assert load_index(faces, 32, "xseg", face_type="wf", index_root=tmp_path / "idx").files


def test_train_option_reaches_the_config() -> None:
    from torchsae.cli.train import flags_to_overrides

    assert flags_to_overrides({"index_dir": "/scratch/idx"}) == {"data": {"index_dir": "/scratch/idx"}}


def test_an_up_to_date_index_in_a_read_only_faceset_is_used_as_it_is(tmp_path: Path, monkeypatch) -> None:
    """Another user built the index beside the faces; we cannot take its lock (simulated: the lock
    path is a folder), but nothing changed, so the index loads; a changed faceset is still an error."""
    monkeypatch.delenv(INDEX_DIR_ENV, raising=False)
    faces = tmp_path / "faces"
    make_faceset(faces, 3, size=64)
    built = build_index(faces, 32, "xseg", workers=1, progress=False).index
    (faces / SIDECAR / "lock").unlink()
    (faces / SIDECAR / "lock").mkdir()
    again = build_index(faces, 32, "xseg", workers=1, progress=False)
    assert again.processed == 0 and again.index.directory == built.directory
    make_faceset(tmp_path / "more", 4, size=64)
    (tmp_path / "more" / "face_003.jpg").rename(faces / "face_003.jpg")
    with pytest.raises(SideIndexError, match="lock file .*--index-dir"):
        build_index(faces, 32, "xseg", workers=1, progress=False)
