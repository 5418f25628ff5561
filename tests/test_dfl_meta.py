"""DFLMeta reading and writing against files written by DeepFaceLab's own code (tests/fixtures/dfl).

References: the manifest's sha256 sums, shapes and values (computed by DeepFaceLab's DFLJPG), the
``*.mask.npy`` arrays from DeepFaceLab's ``get_xseg_mask``, OpenCV's encoders (for the xseg writer's
truncation and JPEG-fallback rules written out here by hand), and byte comparisons of rewritten files.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from torchsae.dfl.errors import DFLFormatError, UnsafePickleError
from torchsae.dfl.jpeg import list_segments, read_app15, replace_app15
from torchsae.dfl.meta import (
    XSEG_MAX_BYTES,
    DFLMeta,
    decode_xseg_mask,
    encode_xseg_mask,
    load_meta,
    meta_from_bytes,
    save_meta,
    set_xseg_mask,
)
from torchsae.errors import TorchSAEError

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ENTRIES = {e["file"]: e for e in MANIFEST["files"]}
XSEG_FILE = "dfl_wf_01_xseg256_binary.jpg"
PLAIN_FILE = "plain_09_no_metadata.jpg"


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, np.float32).tobytes()).hexdigest()


def _copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    return target


def _scan_bytes(data: bytes) -> bytes:
    """Everything from the first non-APP segment on: the image itself, which must never change."""
    first = next(
        s for s in list_segments(data, "x") if s.marker not in (0xD8,) and not 0xE0 <= s.marker <= 0xEF
    )
    return data[first.offset :]


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=lambda e: e["file"])
def test_fixture_metadata_matches_manifest(entry: dict) -> None:
    path = FIXTURES / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["file_sha256"]
    meta = load_meta(path)
    assert meta.has_metadata == entry["has_metadata"]
    assert meta.image_hw == tuple(entry["image_shape"][:2])
    assert meta.has_xseg == entry["has_xseg"]
    if not entry["has_metadata"]:
        assert meta.face_type is None and meta.landmarks is None and meta.to_dict() == {}
        return
    assert meta.face_type == entry["face_type"]
    assert meta.landmarks.dtype == np.float32 and meta.landmarks.shape == (68, 2)
    np.testing.assert_array_equal(meta.landmarks, np.asarray(entry["landmarks"], np.float32))
    np.testing.assert_array_equal(meta.source_rect, entry["source_rect"])
    assert meta.image_to_face_mat.dtype == np.float64
    np.testing.assert_array_equal(meta.image_to_face_mat, entry["image_to_face_mat"])
    assert meta.source_filename == entry["source_filename"]
    assert meta.resolved_eyebrows_expand_mod == entry["eyebrows_expand_mod_effective"]
    assert sorted(meta.to_dict()) == sorted(entry["dfl_dict_keys"])
    if entry["seg_ie_polys"] is not None:
        polys = meta.ie_polys()
        assert [(kind, pts.shape[0]) for kind, pts in polys] == [
            (p["type"], p["n_pts"]) for p in entry["seg_ie_polys"]
        ]
    xseg = entry["xseg"]
    if xseg is None:
        assert meta.xseg_mask() is None
        return
    buf = meta.xseg_mask_buf
    assert buf.dtype == np.uint8 and list(buf.shape) == [xseg["stored_buffer_len"]]
    assert hashlib.sha256(buf.tobytes()).hexdigest() == xseg["stored_buffer_sha256"]
    assert buf.tobytes().startswith(b"\x89PNG" if xseg["stored_codec"] == "png" else b"\xff\xd8")
    mask = meta.xseg_mask()
    assert mask.dtype == np.float32 and list(mask.shape) == xseg["decoded_shape"]
    assert _sha(mask) == xseg["sha256_float32"]
    assert (mask.min(), mask.max()) == (xseg["min"], xseg["max"])
    assert mask.mean(dtype=np.float64) == pytest.approx(xseg["mean"], abs=1e-9)
    assert len(np.unique(mask)) == xseg["n_unique_values"]
    np.testing.assert_array_equal(mask, np.load(FIXTURES / xseg["npy"]))
    # Our writer reproduces DeepFaceLab's stored PNG bytes from the decoded mask.
    np.testing.assert_array_equal(encode_xseg_mask(mask), buf)


@pytest.mark.parametrize("name", [e["file"] for e in MANIFEST["files"] if e["has_metadata"]])
def test_unchanged_rewrite_is_byte_identical(tmp_path: Path, name: str) -> None:
    """Load + save reproduces DeepFaceLab's file exactly (same pickle, same layout)."""
    path = _copy(tmp_path, name)
    save_meta(path, load_meta(path))
    assert path.read_bytes() == (FIXTURES / name).read_bytes()


def test_edit_round_trip_keeps_image_and_unknown_keys(tmp_path: Path) -> None:
    path = _copy(tmp_path, "dfl_wf_07_noxseg_iepolys.jpg")
    original = path.read_bytes()
    meta = load_meta(path)
    meta.landmarks = meta.landmarks + np.float32(0.5)
    meta.eyebrows_expand_mod = 1.5
    meta.extra["custom_tool_key"] = {"nested": [1, 2, 3]}
    meta.source_filename = None  # None values are dropped, as DeepFaceLab's writer does
    save_meta(path, meta)
    data = path.read_bytes()
    assert _scan_bytes(data) == _scan_bytes(original)
    raw = pickle.loads(read_app15(data, "x"))  # what stock DeepFaceLab (plain pickle) would see
    assert "source_filename" not in raw and raw["custom_tool_key"] == {"nested": [1, 2, 3]}
    assert isinstance(raw["landmarks"], list) and isinstance(raw["landmarks"][0][0], float)
    assert raw["eyebrows_expand_mod"] == 1.5
    assert b"numpy._core" not in read_app15(data, "x")
    again = load_meta(path)
    np.testing.assert_array_equal(
        again.landmarks, np.asarray(ENTRIES[path.name]["landmarks"], np.float32) + 0.5
    )
    assert again.extra == {"custom_tool_key": {"nested": [1, 2, 3]}}
    assert again.source_filename is None and again.resolved_eyebrows_expand_mod == 1.5
    np.testing.assert_array_equal(again.source_rect, ENTRIES[path.name]["source_rect"])
    assert [k for k, _ in again.ie_polys()] == [1, 0]


def test_old_list_format_ie_polys() -> None:
    pts = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    new = DFLMeta.from_dict({"seg_ie_polys": {"polys": [{"type": 1, "pts": pts}]}}, "n.jpg")
    old = DFLMeta.from_dict({"seg_ie_polys": [(1, pts.tolist())]}, "o.jpg")
    for meta in (new, old):
        [(kind, got)] = meta.ie_polys()
        assert kind == 1 and got.dtype == np.float32
        np.testing.assert_array_equal(got, pts)
    with pytest.raises(DFLFormatError, match="seg_ie_polys"):
        DFLMeta.from_dict({"seg_ie_polys": {"polys": [{"kind": 1}]}}, "b.jpg").ie_polys()


def test_xseg_png_round_trip(tmp_path: Path) -> None:
    path = _copy(tmp_path, PLAIN_FILE)
    original = path.read_bytes()
    yy, xx = np.mgrid[0:64, 0:80]
    soft = np.clip(1.2 - np.hypot((yy - 32) / 20, (xx - 40) / 28), 0, 1).astype(np.float32)
    soft[0, 0] = 0.999  # truncation, not rounding: stored as 254
    set_xseg_mask(path, soft)
    meta = load_meta(path)
    assert meta.has_metadata and meta.has_xseg and meta.xseg_mask_buf.tobytes().startswith(b"\x89PNG")
    expected = np.floor(np.clip(soft * 255, 0, 255)).astype(np.uint8)[..., None].astype(np.float32) / 255
    got = meta.xseg_mask()
    assert got.shape == (64, 80, 1) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0, 0] == np.float32(254) / np.float32(255)
    assert _scan_bytes(path.read_bytes()) == _scan_bytes(original)
    set_xseg_mask(path, None)
    meta = load_meta(path)
    assert not meta.has_xseg and meta.to_dict() == {}
    assert path.read_bytes() == original  # no keys left: APP15 removed, file back to what it was


def _noisy_soft_mask(size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    soft = np.clip(1.3 - 2.2 * np.hypot(yy - 0.5, (xx - 0.5) * 0.8), 0, 1)
    return np.clip(soft + rng.normal(0, 0.06, soft.shape), 0, 1).astype(np.float32)


def test_xseg_jpeg_fallback_for_large_masks(tmp_path: Path) -> None:
    mask = _noisy_soft_mask()
    as_uint8 = np.clip(mask * 255, 0, 255).astype(np.uint8)
    assert cv2.imencode(".png", as_uint8)[1].size > XSEG_MAX_BYTES  # premise: the PNG is too big
    buf = encode_xseg_mask(mask)
    assert buf.tobytes().startswith(b"\xff\xd8") and buf.size <= XSEG_MAX_BYTES
    # The writer keeps the highest JPEG quality that fits: find it independently.
    sizes = {q: cv2.imencode(".jpg", as_uint8, [cv2.IMWRITE_JPEG_QUALITY, q])[1].size for q in range(101)}
    best = max(q for q, n in sizes.items() if n <= XSEG_MAX_BYTES)
    np.testing.assert_array_equal(buf, cv2.imencode(".jpg", as_uint8, [cv2.IMWRITE_JPEG_QUALITY, best])[1])
    path = _copy(tmp_path, XSEG_FILE)
    set_xseg_mask(path, mask)
    got = load_meta(path).xseg_mask()
    assert got.shape == (512, 512, 1)
    assert np.abs(got[..., 0] - as_uint8 / 255.0).mean() < 0.05  # lossy, but the same mask


def test_encode_reduces_to_one_channel_and_rejects_bad_shapes() -> None:
    three = np.zeros((8, 8, 3), np.float32)
    three[..., 0] = 1.0
    np.testing.assert_array_equal(decode_xseg_mask(encode_xseg_mask(three)), np.ones((8, 8, 1), np.float32))
    np.testing.assert_array_equal(
        decode_xseg_mask(encode_xseg_mask(np.ones((4, 5), bool))), np.ones((4, 5, 1))
    )
    with pytest.raises(DFLFormatError):
        encode_xseg_mask(np.zeros((2, 2, 2, 2)))
    with pytest.raises(DFLFormatError, match="not a decodable"):
        decode_xseg_mask(b"\x00garbage")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, os.urandom(3000).replace(b"\xff", b"\x00")],
    ids=["zero-bytes", "png-renamed", "random"],
)
def test_bad_files_raise_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "face_0007.jpg"
    path.write_bytes(content)
    with pytest.raises(DFLFormatError, match="face_0007.jpg"):
        load_meta(path)
    with pytest.raises(DFLFormatError, match="face_0007.jpg"):
        set_xseg_mask(path, np.ones((4, 4)))
    assert path.read_bytes() == content


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    data = (FIXTURES / XSEG_FILE).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DFLFormatError, match="cut.jpg.*truncated"):
        load_meta(cut)
    with pytest.raises(DFLFormatError, match="missing.jpg.*cannot read"):
        load_meta(tmp_path / "missing.jpg")


def test_real_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "renamed.jpg"
    path.write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    with pytest.raises(DFLFormatError, match="not a JPEG"):
        load_meta(path)


def test_hostile_app15_in_a_jpeg_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'canary'}",)

    path = tmp_path / "evil.jpg"
    base = (FIXTURES / PLAIN_FILE).read_bytes()
    path.write_bytes(replace_app15(base, pickle.dumps({"landmarks": Evil()}), "evil.jpg"))
    with pytest.raises(UnsafePickleError, match=r"evil\.jpg.*system"):
        load_meta(path)
    assert not (tmp_path / "canary").exists()


@pytest.mark.parametrize(
    "payload, key",
    [
        ({"landmarks": [[1.0, 2.0]] * 5}, "landmarks"),
        ({"image_to_face_mat": np.eye(3)}, "image_to_face_mat"),
        ({"face_type": 3}, "face_type"),
        ({"xseg_mask": np.zeros(4, np.float32)}, "xseg_mask"),
    ],
)
def test_malformed_keys(tmp_path: Path, payload: dict, key: str) -> None:
    path = tmp_path / "odd.jpg"
    path.write_bytes(replace_app15((FIXTURES / PLAIN_FILE).read_bytes(), pickle.dumps(payload), "x"))
    with pytest.raises(DFLFormatError, match=f"odd.jpg.*{key}"):
        load_meta(path)


def test_app15_that_is_not_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.jpg"
    path.write_bytes(replace_app15((FIXTURES / PLAIN_FILE).read_bytes(), pickle.dumps([1, 2]), "x"))
    with pytest.raises(DFLFormatError, match="expected a dict"):
        load_meta(path)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_oversized_payload_leaves_original_intact(tmp_path: Path) -> None:
    path = _copy(tmp_path, XSEG_FILE)
    meta = load_meta(path)
    meta.extra["blob"] = b"x" * 70_000
    with pytest.raises(DFLFormatError, match=f"{XSEG_FILE}.*65533"):
        save_meta(path, meta)
    assert path.read_bytes() == (FIXTURES / XSEG_FILE).read_bytes()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["replace", "fsync"])
def test_failed_write_leaves_original_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    path = _copy(tmp_path, XSEG_FILE)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, target, fail)
    with pytest.raises(TorchSAEError, match=r"No space left on device\); it is unchanged"):  # one line
        set_xseg_mask(path, np.zeros((16, 16), np.float32))
    monkeypatch.undo()
    assert path.read_bytes() == (FIXTURES / XSEG_FILE).read_bytes()
    assert _leftovers(tmp_path) == []


def test_meta_from_bytes_and_jpeg_without_image(tmp_path: Path) -> None:
    data = (FIXTURES / "dfl_wf_07_noxseg_iepolys.jpg").read_bytes()
    from_bytes, from_file = (
        meta_from_bytes(data, "mem.jpg"),
        load_meta(FIXTURES / "dfl_wf_07_noxseg_iepolys.jpg"),
    )
    assert from_bytes.to_dict().keys() == from_file.to_dict().keys()
    np.testing.assert_array_equal(from_bytes.landmarks, from_file.landmarks)
    assert from_bytes.image_hw == (512, 512)
    with pytest.raises(DFLFormatError, match="empty.jpg.*no image frame"):
        meta_from_bytes(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9", "empty.jpg")
