"""``torchsae inspect`` and ``torchsae xseg get|set|clear`` through click's CliRunner.

References: the fixture manifest (what each file holds) and DeepFaceLab's decoded masks (*.mask.npy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from torchsae.cli import main
from torchsae.dfl.meta import load_meta

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
XSEG_FILE = "dfl_wf_01_xseg256_binary.jpg"
KEYS = {
    "file",
    "has_metadata",
    "face_type",
    "has_xseg",
    "xseg_shape",
    "xseg_polygons",
    "polygons_not_applied",
    "landmarks",
    "error",
}


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_inspect_json_reports_every_fixture() -> None:
    result = _run("inspect", "--json", FIXTURES)
    assert result.exit_code == 1, result.output  # plain_09_no_metadata.jpg is no DeepFaceLab face
    rows = {Path(row["file"]).name: row for row in json.loads(result.output)}
    assert set(rows) == {e["file"] for e in MANIFEST["files"]}
    for entry in MANIFEST["files"]:
        row = rows[entry["file"]]
        assert set(row) == KEYS and row["error"] is None
        assert row["has_metadata"] == entry["has_metadata"] and row["face_type"] == entry["face_type"]
        assert row["has_xseg"] == entry["has_xseg"]
        polygons = entry.get("seg_ie_polys") or []
        assert row["xseg_polygons"] == len(polygons)
        assert row["polygons_not_applied"] == (bool(polygons) and not entry["has_xseg"])
        assert row["xseg_shape"] == (entry["xseg"]["decoded_shape"] if entry["xseg"] else None)
        if entry["has_metadata"]:
            np.testing.assert_array_equal(
                np.asarray(row["landmarks"], np.float32), np.float32(entry["landmarks"])
            )
        else:
            assert row["landmarks"] is None


def test_inspect_rejected_file_gives_exit_1_and_others_still_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes((FIXTURES / XSEG_FILE).read_bytes()[:500])
    result = _run("inspect", "--json", FIXTURES / XSEG_FILE, bad)
    assert result.exit_code == 1
    good_row, bad_row = json.loads(result.stdout)
    assert good_row["error"] is None and good_row["has_xseg"] is True
    assert "broken.jpg" in bad_row["error"] and "truncated" in bad_row["error"]
    table = _run("inspect", FIXTURES / XSEG_FILE, bad)
    assert table.exit_code == 1
    assert "REJECTED" in table.stdout and "whole_face" in table.stdout and "256x256" in table.stdout
    assert _run("inspect", FIXTURES / XSEG_FILE).exit_code == 0


def test_xseg_get_npy_and_png(tmp_path: Path) -> None:
    reference = np.load(FIXTURES / "dfl_wf_05_flip_rotm8_xseg128_soft.mask.npy")
    out = tmp_path / "m.npy"
    result = _run("xseg", "get", FIXTURES / "dfl_wf_05_flip_rotm8_xseg128_soft.jpg", out)
    assert result.exit_code == 0, result.output
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (128, 128, 1)
    np.testing.assert_array_equal(got, reference)
    png = tmp_path / "m.png"
    assert _run("xseg", "get", FIXTURES / "dfl_wf_05_flip_rotm8_xseg128_soft.jpg", png).exit_code == 0
    np.testing.assert_array_equal(
        cv2.imread(str(png), cv2.IMREAD_UNCHANGED), np.rint(reference[..., 0] * 255)
    )


def test_xseg_get_without_mask_fails_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["xseg", "get", str(FIXTURES / "plain_09_no_metadata.jpg"), str(tmp_path / "m.npy")]
    )
    assert result.exit_code == 1
    assert "has no DeepFaceLab metadata" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.npy").exists()
    labelled = CliRunner().invoke(
        main, ["xseg", "get", str(FIXTURES / "dfl_wf_07_noxseg_iepolys.jpg"), str(tmp_path / "m.npy")]
    )
    assert labelled.exit_code == 1
    assert "has no XSeg mask (its XSeg polygons were never applied)" in labelled.output


def test_inspect_totals_line_and_unapplied_polygons() -> None:
    result = _run("inspect", FIXTURES)
    assert result.exit_code == 1  # the plain JPEG without metadata is a problem
    lines = result.stdout.splitlines()
    assert lines[-1] == (
        "total: 7 files, 4 with XSeg, 1 without DeepFaceLab metadata, 0 rejected, "
        "1 with XSeg polygons never applied"
    )
    row = next(line for line in lines if "dfl_wf_07_noxseg_iepolys.jpg" in line)
    assert "2 XSeg polygons never applied" in row
    plain = next(line for line in lines if "plain_09_no_metadata.jpg" in line)
    assert "no DeepFaceLab metadata" in plain
    assert "1 have no DeepFaceLab metadata" in result.stderr
    assert _run("inspect", FIXTURES / XSEG_FILE).exit_code == 0


@pytest.mark.parametrize("kind", ["png", "npy"])
def test_xseg_set_then_get_then_clear(tmp_path: Path, kind: str) -> None:
    face = tmp_path / "face.jpg"
    shutil.copyfile(FIXTURES / "dfl_wf_07_noxseg_iepolys.jpg", face)
    yy, xx = np.mgrid[0:256, 0:256]
    soft = np.clip(1.5 - np.hypot(yy - 128, xx - 128) / 60, 0, 1).astype(np.float32)
    mask_path = tmp_path / f"mask.{kind}"
    if kind == "png":
        as_uint8 = np.rint(soft * 255).astype(np.uint8)
        cv2.imwrite(str(mask_path), as_uint8)
        expected = as_uint8.astype(np.float32) / 255
    else:
        np.save(mask_path, soft)
        expected = np.floor(soft * 255).astype(np.uint8).astype(np.float32) / 255  # DFL truncates
    result = _run("xseg", "set", face, mask_path)
    assert result.exit_code == 0, result.output
    meta = load_meta(face)
    np.testing.assert_array_equal(meta.xseg_mask()[..., 0], expected)
    assert meta.face_type == "whole_face" and meta.ie_polys()  # the rest of the metadata is kept
    out = tmp_path / "back.npy"
    assert _run("xseg", "get", face, out).exit_code == 0
    np.testing.assert_array_equal(np.load(out)[..., 0], expected)
    assert _run("xseg", "clear", face).exit_code == 0
    assert not load_meta(face).has_xseg
    assert face.read_bytes() == (FIXTURES / "dfl_wf_07_noxseg_iepolys.jpg").read_bytes()


def test_xseg_set_rejects_bad_mask_files(tmp_path: Path) -> None:
    face = tmp_path / "face.jpg"
    shutil.copyfile(FIXTURES / XSEG_FILE, face)
    np.save(tmp_path / "ints.npy", np.ones((4, 4), np.int64))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    (tmp_path / "mask.txt").write_text("1")
    for name, message in (
        ("ints.npy", "dtype"),
        ("junk.png", "not a readable PNG"),
        ("mask.txt", ".png or .npy"),
    ):
        result = CliRunner().invoke(main, ["xseg", "set", str(face), str(tmp_path / name)])
        assert result.exit_code == 1 and message in result.output, result.output
    assert face.read_bytes() == (FIXTURES / XSEG_FILE).read_bytes()
