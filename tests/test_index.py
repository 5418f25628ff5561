"""The side index: masks against DeepFaceLab's own outputs, skipped-file reporting, incremental rebuilds,
atomicity under a crash, and the build lock."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_loaders_support import DFL_FACES, FIXTURES, PLAIN_FACE, face_bytes, make_faceset

import pipelines.index as index_mod
from pipelines.index import SideIndexError, build_index, build_lock, ensure_index, is_stale, load_index
from torchsae.dfl.jpeg import replace_app15
from torchsae.dfl.unpickle import compat_dumps


def _tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every faceset file (the sidecar folder excluded)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _cmyk_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("CMYK", (64, 64), (10, 20, 30, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_masks_match_deepfacelab_sampleprocessor(tmp_path: Path) -> None:
    """Index masks at 128 equal DeepFaceLab's SampleProcessor output (fixtures) within uint8 rounding."""
    for face in DFL_FACES:
        shutil.copy(face, tmp_path / face.name)
    index = build_index(tmp_path, 128, "xseg", workers=1, progress=False).index
    assert isinstance(index.masks, np.memmap) and index.masks.dtype == np.uint8
    assert index.files == [f.name for f in DFL_FACES]
    for row, name in enumerate(index.files):
        stem = Path(name).stem
        full = np.load(FIXTURES / "sampleproc_r128" / f"{stem}.r128.full_face_mask.npy")[..., 0]
        em = np.load(FIXTURES / "sampleproc_r128" / f"{stem}.r128.eyes_mouth_mask.npy")[..., 0]
        np.testing.assert_allclose(index.masks[row, 0] / 255.0, full, atol=0.5 / 255 + 1e-6)
        # DFL renormalises the eyes-mouth mask by its maximum after warping; the index stores it
        # renormalised already (warping with zero strength changes nothing).
        np.testing.assert_allclose(
            index.masks[row, 1] / 255.0, em / max(em.max(), 1e-12), atol=0.5 / 255 + 1e-6
        )
    kinds = {e["name"]: e["mask"] for e in index.entries}
    assert kinds["dfl_wf_01_xseg256_binary.jpg"] == "xseg"
    assert kinds["dfl_f_08_fullface_noxseg.jpg"] == "hull"
    assert index.entries[0]["face_type"] == "full_face"
    manifest = {f["file"]: f for f in json.loads((FIXTURES / "manifest.json").read_text())["files"]}
    for row, name in enumerate(index.files):
        np.testing.assert_allclose(index.landmarks[row], np.array(manifest[name]["landmarks"]), atol=1e-4)


def test_unusable_files_are_listed_with_reasons(tmp_path: Path) -> None:
    make_faceset(tmp_path, 4)
    shutil.copy(PLAIN_FACE, tmp_path / "plain.jpg")
    good = (tmp_path / "face_000.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "renamed_png.jpg").write_bytes(
        cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    )
    (tmp_path / "cmyk.jpg").write_bytes(_cmyk_jpeg())
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    gray = cv2.cvtColor(cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
    (tmp_path / "gray.jpg").write_bytes(
        replace_app15(cv2.imencode(".jpg", gray)[1].tobytes(), _payload(good), "t")
    )
    wide = cv2.imencode(".jpg", np.zeros((64, 96, 3), np.uint8))[1].tobytes()
    (tmp_path / "wide.jpg").write_bytes(replace_app15(wide, _payload(good), "t"))
    before = _tree_digest(tmp_path)

    report = build_index(tmp_path, 64, "xseg", workers=1, progress=False)
    reasons = {s["name"]: s["reason"] for s in report.index.skipped}
    assert set(reasons) == {
        "plain.jpg",
        "truncated.jpg",
        "renamed_png.jpg",
        "cmyk.jpg",
        "picture.png",
        "wide.jpg",
    }
    assert "truncated" in reasons["truncated.jpg"]
    assert "not a JPEG" in reasons["renamed_png.jpg"] and "not a JPEG" in reasons["picture.png"]
    assert "CMYK" in reasons["cmyk.jpg"]
    assert "metadata" in reasons["plain.jpg"]
    assert "square" in reasons["wide.jpg"]
    # grayscale converts to BGR (libjpeg-turbo replicates the channel), so it is used, not skipped
    assert "gray.jpg" in report.index.files
    assert report.index.entries[report.index.files.index("gray.jpg")]["colorspace"] == "Gray"
    assert report.summary().startswith("indexed 5 files, skipped 6 (see ")
    assert _tree_digest(tmp_path) == before  # the faceset's files are never modified

    # 'full' trains on files without metadata; 'require' insists on an XSeg mask
    full = build_index(tmp_path, 64, "full", workers=1, progress=False).index
    assert "plain.jpg" in full.files and np.all(full.masks[full.files.index("plain.jpg"), 0] == 255)
    require = build_index(tmp_path, 64, "require", workers=1, progress=False).index
    assert all(e["mask"] == "xseg" for e in require.entries)
    assert "XSeg" in {s["name"]: s["reason"] for s in require.skipped}["face_000.jpg"]  # fixture 0 has none


def _payload(jpeg: bytes) -> bytes:
    from torchsae.dfl.jpeg import read_app15

    return read_app15(jpeg, "t")


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = index_mod.process_file

    def counted(path: str, resolution: int, policy: str):
        calls.append(os.path.basename(path))
        return real(path, resolution, policy)

    monkeypatch.setattr(index_mod, "process_file", counted)
    return calls


def test_incremental_rebuild_touches_only_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_faceset(tmp_path, 10)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    calls = _counting(monkeypatch)
    first = build_index(tmp_path, 64, "xseg", workers=1, progress=False)
    assert len(calls) == 11 and first.processed == 11
    old_masks = np.array(first.index.masks)

    calls.clear()
    again = build_index(tmp_path, 64, "xseg", workers=1, progress=False)
    assert calls == [] and again.reused == 10  # an unchanged bad file is not retried either
    assert not is_stale(tmp_path, 64, "xseg")

    (tmp_path / "face_003.jpg").write_bytes(face_bytes(7, 128))  # changed content (face 7's metadata)
    (tmp_path / "face_004.jpg").unlink()
    (tmp_path / "face_100.jpg").write_bytes(face_bytes(100, 128))
    assert is_stale(tmp_path, 64, "xseg")
    calls.clear()
    index = ensure_index(tmp_path, 64, "xseg", workers=1, progress=False)
    assert sorted(calls) == ["face_003.jpg", "face_100.jpg"]
    assert "face_004.jpg" not in index.files and len(index) == 10
    for name in ("face_000.jpg", "face_005.jpg", "face_009.jpg"):
        np.testing.assert_array_equal(
            index.masks[index.files.index(name)], old_masks[first.index.files.index(name)]
        )
    np.testing.assert_array_equal(
        index.masks[index.files.index("face_003.jpg")], old_masks[first.index.files.index("face_007.jpg")]
    )


def test_verify_catches_metadata_change_with_same_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_faceset(tmp_path, 3)
    target = tmp_path / "face_001.jpg"
    build_index(tmp_path, 64, "hull", workers=1, progress=False)
    from torchsae.dfl.meta import load_meta

    meta = load_meta(target)
    stat = target.stat()
    values = meta.to_dict()
    values["landmarks"] = [
        [float(x) + 3.0, float(y)] for x, y in np.asarray(meta.landmarks)
    ]  # same pickle size
    data = replace_app15(target.read_bytes(), compat_dumps(values), "t")
    target.write_bytes(data)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size
    calls = _counting(monkeypatch)
    assert not is_stale(tmp_path, 64, "hull")  # size and mtime alone cannot see it
    assert is_stale(tmp_path, 64, "hull", verify=True)
    build_index(tmp_path, 64, "hull", workers=1, progress=False, verify=True)
    assert calls == ["face_001.jpg"]


def test_crash_mid_build_keeps_the_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_faceset(tmp_path, 6)
    old = build_index(tmp_path, 64, "xseg", workers=1, progress=False).index
    old_files, old_masks = list(old.files), np.array(old.masks)
    (tmp_path / "face_100.jpg").write_bytes(face_bytes(100, 128))
    (tmp_path / "face_002.jpg").write_bytes(face_bytes(50, 128))

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("power cut")

    # 1) killed while processing files; 2) killed after the new generation is written, before the commit
    for target in ("process_file", "atomic_write_text"):
        with monkeypatch.context() as patch:
            patch.setattr(index_mod, target, crash)
            with pytest.raises(KeyboardInterrupt):
                build_index(tmp_path, 64, "xseg", workers=1, progress=False)
        survivor = load_index(tmp_path, 64, "xseg")
        assert survivor.files == old_files
        np.testing.assert_array_equal(survivor.masks, old_masks)

    family = tmp_path / ".torchsae" / "index_r64_xseg"
    assert len([p for p in family.iterdir() if p.is_dir()]) > 1  # the orphaned generation is there...
    fresh = build_index(tmp_path, 64, "xseg", workers=1, progress=False).index
    assert "face_100.jpg" in fresh.files
    assert [p.name for p in family.iterdir() if p.is_dir()] == [fresh.directory.name]  # ...and cleaned


def test_half_written_index_does_not_load(tmp_path: Path) -> None:
    make_faceset(tmp_path, 2)
    family = tmp_path / ".torchsae" / "index_r64_xseg"
    (family / "v000001").mkdir(parents=True)
    (family / "v000001" / "masks.npy").write_bytes(b"partial")
    with pytest.raises(SideIndexError, match="torchsae index"):
        load_index(tmp_path, 64, "xseg")
    (family / "CURRENT").write_text("v000001\n")  # a pointer to an incomplete generation still fails cleanly
    with pytest.raises(SideIndexError):
        load_index(tmp_path, 64, "xseg")
    assert len(ensure_index(tmp_path, 64, "xseg", workers=1, progress=False)) == 2


def test_lock_makes_one_builder_and_others_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_faceset(tmp_path, 5)
    calls = _counting(monkeypatch)
    results: list[int] = []

    def rank() -> None:
        results.append(len(ensure_index(tmp_path, 64, "xseg", workers=1, progress=False)))

    with build_lock(tmp_path):  # another process is building: every rank must wait for it
        threads = [threading.Thread(target=rank) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        assert results == [] and calls == []
    for thread in threads:
        thread.join(timeout=60)
    assert results == [5, 5, 5]
    assert sorted(calls) == [f"face_{i:03d}.jpg" for i in range(5)]  # built once, not three times


def test_parallel_build_matches_serial(tmp_path: Path) -> None:
    """The process pool gives the same index as one process (spawned workers, 40 files)."""
    make_faceset(tmp_path / "a", 40, size=64)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    serial = build_index(tmp_path / "a", 32, "xseg", workers=1, progress=False).index
    parallel = build_index(tmp_path / "b", 32, "xseg", workers=2, progress=False).index
    assert serial.files == parallel.files
    np.testing.assert_array_equal(serial.masks, parallel.masks)


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SideIndexError, match="not a folder"):
        build_index(tmp_path / "missing", 64)
    with pytest.raises(SideIndexError, match="mask policy"):
        build_index(tmp_path, 64, "nope")
