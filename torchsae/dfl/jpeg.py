"""A JPEG segment walker, and reading / replacing DeepFaceLab's APP15 metadata segment.

Why our own walker: DeepFaceLab keeps a face's metadata in an APP15 segment and its reader loses sync
on valid JPEGs (it treats DRI as length-less and does not allow fill bytes). We walk every marker the
way ITU T.81 defines it, skip entropy-coded scan data correctly (``FF00`` stuffing and ``RSTn`` inside
a scan, several scans in a progressive file) and reject truncated data. Rewriting the metadata copies
every other byte verbatim: the image is never recompressed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from torchsae.dfl.errors import DFLFormatError

SOI, EOI, SOS, DRI, TEM = 0xD8, 0xD9, 0xDA, 0xDD, 0x01
APP0, APP15 = 0xE0, 0xEF
# Start-of-frame markers (every coding process); C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
MAX_SEGMENT_PAYLOAD = 65533  # 16-bit length field, which counts its own two bytes

# In entropy-coded data a real marker is 0xFF followed by anything except 00 (a stuffed FF byte),
# D0-D7 (restart markers, part of the scan) and FF (a fill byte before the marker).
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _has_no_length(marker: int) -> bool:
    """SOI, EOI, RST0-7 and TEM are bare markers; every other marker carries a 16-bit length."""
    return marker in (SOI, EOI, TEM) or 0xD0 <= marker <= 0xD7


@dataclass(frozen=True)
class Segment:
    """One marker segment. Offsets index the file's bytes.

    ``offset`` is the marker's 0xFF byte (after any fill bytes), ``end`` the first byte after the
    segment's payload. For SOS, ``scan_end`` is the first byte after its entropy-coded data; for every
    other marker it equals ``end``.
    """

    marker: int
    offset: int
    payload_offset: int
    end: int
    scan_end: int

    @property
    def payload_length(self) -> int:
        return self.end - self.payload_offset

    @property
    def name(self) -> str:
        """``'FFD8'``-style name, as DeepFaceLab tools and the fixture manifest print markers."""
        return f"FF{self.marker:02X}"


def iter_segments(data: bytes, source: str) -> Iterator[Segment]:
    """Yield every segment from SOI to EOI (inclusive); bytes after EOI are not looked at.

    Raises DFLFormatError naming ``source`` when the data is not a JPEG, a segment is malformed or the
    data ends before EOI.
    """
    size = len(data)
    if size == 0:
        raise DFLFormatError(f"{source}: empty file, not a JPEG")
    if size < 2 or data[0] != 0xFF or data[1] != SOI:
        raise DFLFormatError(f"{source}: not a JPEG (no SOI marker at the start)")
    yield Segment(SOI, 0, 2, 2, 2)
    pos = 2
    while True:
        if pos >= size or data[pos] != 0xFF:
            if pos >= size:
                raise DFLFormatError(f"{source}: truncated JPEG (ends at byte {size} before EOI)")
            raise DFLFormatError(
                f"{source}: bad JPEG: expected a marker at byte {pos}, found 0x{data[pos]:02X}"
            )
        while pos + 1 < size and data[pos + 1] == 0xFF:  # fill bytes: any number of 0xFF before a marker
            pos += 1
        if pos + 1 >= size:
            raise DFLFormatError(f"{source}: truncated JPEG (ends inside a marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0x00 or marker == SOI:
            raise DFLFormatError(f"{source}: bad JPEG: invalid marker FF{marker:02X} at byte {pos}")
        if _has_no_length(marker):
            yield Segment(marker, pos, pos + 2, pos + 2, pos + 2)
            if marker == EOI:
                return
            pos += 2
            continue
        if pos + 4 > size:
            raise DFLFormatError(
                f"{source}: truncated JPEG (segment FF{marker:02X} at byte {pos} has no length)"
            )
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2:
            raise DFLFormatError(
                f"{source}: bad JPEG: segment FF{marker:02X} at byte {pos} has length {length}"
            )
        if end > size:
            raise DFLFormatError(
                f"{source}: truncated JPEG (segment FF{marker:02X} at byte {pos} runs past the end)"
            )
        scan_end = end
        if marker == SOS:
            found = _MARKER_IN_SCAN.search(data, end)
            if found is None:
                raise DFLFormatError(f"{source}: truncated JPEG (scan data at byte {end} never ends; no EOI)")
            scan_end = found.start()
        yield Segment(marker, pos, pos + 4, end, scan_end)
        pos = scan_end


def list_segments(data: bytes, source: str) -> list[Segment]:
    """All segments of ``data`` (see :func:`iter_segments`)."""
    return list(iter_segments(data, source))


def frame_shape(segments: list[Segment], data: bytes) -> tuple[int, int] | None:
    """(height, width) from the first SOF segment, or None when there is none."""
    for seg in segments:
        if seg.marker in SOF_MARKERS and seg.payload_length >= 5:
            p = seg.payload_offset
            return int.from_bytes(data[p + 1 : p + 3], "big"), int.from_bytes(data[p + 3 : p + 5], "big")
    return None


def read_app15(data: bytes, source: str) -> bytes | None:
    """The payload of the first APP15 segment (DeepFaceLab's metadata pickle), or None.

    The whole file is walked, so a truncated or malformed JPEG raises DFLFormatError even when an
    APP15 segment comes first.
    """
    payload = None
    for seg in iter_segments(data, source):
        if seg.marker == APP15 and payload is None:
            payload = bytes(data[seg.payload_offset : seg.end])
    return payload


def replace_app15(data: bytes, payload: bytes | None, source: str) -> bytes:
    """Return ``data`` with its first APP15 removed and, unless ``payload`` is None, a new one inserted.

    The new segment goes directly after the last APPn segment (0xE0-0xEF) that remains, or right
    after SOI when there is none: DeepFaceLab's writer does the same, so the layout of our files
    matches theirs. Every other byte (fill bytes, scan data, anything after EOI) is copied verbatim.
    """
    if payload is not None and len(payload) > MAX_SEGMENT_PAYLOAD:
        raise DFLFormatError(
            f"{source}: metadata payload of {len(payload)} bytes exceeds the JPEG segment limit of "
            f"{MAX_SEGMENT_PAYLOAD} bytes"
        )
    segments = list_segments(data, source)
    removed = next((s for s in segments if s.marker == APP15), None)
    if removed is not None:
        segments = [s for s in segments if s is not removed]
    app_segments = [s for s in segments if APP0 <= s.marker <= APP15]
    insert_at = app_segments[-1].end if app_segments else segments[0].end
    if removed is not None:
        body = data[: removed.offset] + data[removed.end :]
        if insert_at > removed.offset:
            insert_at -= removed.end - removed.offset
    else:
        body = bytes(data)
    if payload is None:
        return bytes(body)
    header = bytes((0xFF, APP15)) + (len(payload) + 2).to_bytes(2, "big")
    return body[:insert_at] + header + bytes(payload) + body[insert_at:]
