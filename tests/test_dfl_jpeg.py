"""JPEG segment walker and APP15 replacement (torchsae.dfl.jpeg).

References: the fixture manifest's marker lists and APP15 offsets (written by DeepFaceLab's own code),
OpenCV's libjpeg decoder (a rewritten file must decode to the same pixels), and byte comparisons of
everything outside the APP15 segment.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.jpeg import (
    APP15,
    DRI,
    EOI,
    MAX_SEGMENT_PAYLOAD,
    SOS,
    frame_shape,
    list_segments,
    read_app15,
    replace_app15,
)

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    """A textured BGR test image (gradients plus noise, so the scans hold 0xFF00 stuffing)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.float32)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)


def _encode(params: list[int] | None = None, img: np.ndarray | None = None) -> bytes:
    ok, buf = cv2.imencode(".jpg", _image() if img is None else img, params or [])
    assert ok
    return buf.tobytes()


def _decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=lambda e: e["file"])
def test_fixture_markers_and_app15_match_manifest(entry: dict) -> None:
    data = (FIXTURES / entry["file"]).read_bytes()
    segments = list_segments(data, entry["file"])
    first_sos = next(i for i, s in enumerate(segments) if s.marker == SOS)
    assert [s.name for s in segments[: first_sos + 1]] == entry["jpeg_markers_before_scan"]
    assert segments[-1].marker == EOI and segments[-1].end == len(data)
    assert frame_shape(segments, data) == tuple(entry["image_shape"][:2])
    payload = read_app15(data, entry["file"])
    if not entry["has_metadata"]:
        assert payload is None
        return
    app15 = next(s for s in segments if s.marker == APP15)
    info = entry["app15"]
    assert app15.offset == info["marker_offset"]
    assert app15.payload_offset == info["payload_offset"]
    assert app15.payload_length == info["payload_length"] == info["segment_length_field"] - 2
    assert hashlib.sha256(payload).hexdigest() == info["payload_sha256"]
    assert payload[:2] == bytes((0x80, info["pickle_protocol"]))


def test_dri_restart_markers_walk_and_rewrite() -> None:
    """DeepFaceLab's reader loses sync on DRI; ours must walk it and the RSTn markers inside scans."""
    data = _encode([cv2.IMWRITE_JPEG_RST_INTERVAL, 2])
    segments = list_segments(data, "dri.jpg")
    assert DRI in [s.marker for s in segments]
    dri = next(s for s in segments if s.marker == DRI)
    assert dri.payload_length == 2  # length field 4: a 2-byte restart interval
    sos = next(s for s in segments if s.marker == SOS)
    scan = data[sos.end : sos.scan_end]
    assert any(bytes((0xFF, 0xD0 + n)) in scan for n in range(8)), "the test JPEG has no RSTn markers"
    assert segments[-1].marker == EOI
    out = replace_app15(data, b"payload", "dri.jpg")
    assert read_app15(out, "dri.jpg") == b"payload"
    np.testing.assert_array_equal(_decode(out), _decode(data))
    assert replace_app15(out, None, "dri.jpg") == data


def test_progressive_multiple_scans() -> None:
    data = _encode([cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    segments = list_segments(data, "prog.jpg")
    assert sum(s.marker == SOS for s in segments) > 1
    assert 0xC2 in [s.marker for s in segments]
    assert frame_shape(segments, data) == (48, 64)
    out = replace_app15(data, b"\x00" * 1000, "prog.jpg")
    np.testing.assert_array_equal(_decode(out), _decode(data))
    assert read_app15(out, "prog.jpg") == b"\x00" * 1000


def test_fill_bytes_and_bare_markers() -> None:
    """0xFF fill bytes before a marker and a TEM marker between segments are legal (T.81 B.1.1.2)."""
    data = _encode()
    dqt = next(s for s in list_segments(data, "x") if s.marker == 0xDB)
    padded = data[: dqt.offset] + b"\xff\xff\xff" + data[dqt.offset :]
    segments = list_segments(padded, "fill.jpg")
    assert [s.marker for s in segments] == [s.marker for s in list_segments(data, "x")]
    np.testing.assert_array_equal(_decode(padded), _decode(data))
    out = replace_app15(padded, b"meta", "fill.jpg")
    assert b"\xff\xff\xff\xff\xdb" in out  # fill bytes kept verbatim
    assert replace_app15(out, None, "fill.jpg") == padded
    with_tem = data[:2] + b"\xff\x01" + data[2:]
    assert [s.marker for s in list_segments(with_tem, "tem.jpg")][:3] == [0xD8, 0x01, 0xE0]


def test_insert_position_after_last_app_or_soi() -> None:
    data = _encode()
    segments = list_segments(data, "x")
    assert segments[1].marker == 0xE0  # OpenCV writes JFIF APP0
    out = replace_app15(data, b"abc", "x")
    app0_end = segments[1].end
    assert out[:app0_end] == data[:app0_end]
    assert out[app0_end : app0_end + 7] == b"\xff\xef\x00\x05abc"
    assert out[app0_end + 7 :] == data[app0_end:]
    # Without any APPn segment the new APP15 goes right after SOI.
    bare = data[:2] + data[app0_end:]
    out = replace_app15(bare, b"abc", "x")
    assert out == bare[:2] + b"\xff\xef\x00\x05abc" + bare[2:]
    # With an APP1 after APP0 it goes after APP1; an existing APP15 is replaced, not duplicated.
    app1 = b"\xff\xe1\x00\x06Exif"
    two = data[:app0_end] + app1 + data[app0_end:]
    out = replace_app15(replace_app15(two, b"old", "x"), b"new!", "x")
    assert out == data[:app0_end] + app1 + b"\xff\xef\x00\x06new!" + data[app0_end:]
    assert [s.marker for s in list_segments(out, "x")].count(APP15) == 1


def test_first_app15_removed_and_insert_after_remaining_app() -> None:
    """An APP15 before APP0 is removed; the new one follows APP0, the last APPn that remains."""
    data = _encode()
    early = data[:2] + b"\xff\xef\x00\x04zz" + data[2:]
    out = replace_app15(early, b"q", "x")
    app0_end = list_segments(data, "x")[1].end
    assert out == data[:app0_end] + b"\xff\xef\x00\x03q" + data[app0_end:]


def test_trailing_bytes_after_eoi_are_kept() -> None:
    data = _encode() + b"TRAILER"
    assert replace_app15(data, b"m", "t.jpg").endswith(b"\xff\xd9TRAILER")


def test_payload_size_limit() -> None:
    data = _encode()
    out = replace_app15(data, b"a" * MAX_SEGMENT_PAYLOAD, "big.jpg")
    assert read_app15(out, "big.jpg") == b"a" * MAX_SEGMENT_PAYLOAD
    with pytest.raises(DFLFormatError, match=r"big\.jpg.*65533"):
        replace_app15(data, b"a" * (MAX_SEGMENT_PAYLOAD + 1), "big.jpg")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"", "empty"),
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-2], "truncated"),
        (lambda d: d[:21], "truncated"),  # inside APP0
        (lambda d: d[:3], "truncated"),
        (lambda d: b"\x89PNG\r\n\x1a\n" + d[2:], "not a JPEG"),
        (lambda d: os.urandom(4096).replace(b"\xff\xd8", b"\x00\x00"), "not a JPEG"),
        (lambda d: d[:2] + b"\xff\xe0\x00\x01" + d[2:], "length 1"),
        (lambda d: d[:2] + b"\x00" + d[2:], "expected a marker"),
    ],
    ids=["empty", "half", "no-eoi", "in-app0", "three-bytes", "png", "random", "bad-length", "junk"],
)
def test_malformed_data_raises(mutate, message: str) -> None:
    data = mutate(_encode())
    with pytest.raises(DFLFormatError, match=message) as info:
        list_segments(data, "face_0001.jpg")
    assert "face_0001.jpg" in str(info.value)
    with pytest.raises(DFLFormatError):
        replace_app15(data, b"x", "face_0001.jpg")


def test_read_app15_walks_the_whole_file() -> None:
    """A file whose APP15 is intact but whose scan is cut off is still rejected."""
    data = replace_app15(_encode(), b"meta", "x")
    with pytest.raises(DFLFormatError, match="truncated"):
        read_app15(data[:-50], "cut.jpg")
