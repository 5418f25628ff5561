"""DeepFaceLab face metadata: the APP15 dict of a faceset JPEG as a typed dataclass, and XSeg masks.

Why a dataclass over the raw dict: the rest of TorchSAE wants landmarks as a float32 (68, 2) array and
a decoded mask, not pickled lists and PNG bytes. Rewriting must still be faithful, so values that were
not changed are written back exactly as they were read, unknown keys travel in ``extra``, and the file
is replaced atomically (DeepFaceLab's own writer truncates the face to 0 bytes when saving fails).
"""

from __future__ import annotations

import copy
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.jpeg import APP15, SOF_MARKERS, SOS, frame_shape, list_segments, replace_app15
from torchsae.dfl.unpickle import compat_dumps, restricted_loads
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_open

DEFAULT_FACE_TYPE = "full_face"  # what DeepFaceLab assumes when a file has no face_type key
XSEG_MAX_BYTES = 50_000  # DeepFaceLab falls back from PNG to JPEG above this
KNOWN_KEYS = (
    "face_type",
    "landmarks",
    "source_filename",
    "source_rect",
    "source_landmarks",
    "image_to_face_mat",
    "eyebrows_expand_mod",
    "seg_ie_polys",
    "xseg_mask",
)
_FIELD_FOR_KEY = {key: ("xseg_mask_buf" if key == "xseg_mask" else key) for key in KNOWN_KEYS}


@dataclass
class DFLMeta:
    """The metadata of one DeepFaceLab face image.

    ``has_metadata`` is False for a JPEG without an APP15 segment or with an empty dict in it (what
    DeepFaceLab's ``has_data`` says). ``xseg_mask_buf`` is the stored,
    encoded mask (a uint8 array of PNG or JPEG bytes); :meth:`xseg_mask` decodes it. ``image_hw`` is
    the JPEG frame size, read from the file and never stored in the metadata.
    """

    has_metadata: bool = False
    face_type: str | None = None
    landmarks: np.ndarray | None = None  # float32 (68, 2), aligned-face pixels
    source_filename: str | None = None
    source_rect: np.ndarray | None = None  # (l, t, r, b) in the source frame
    source_landmarks: np.ndarray | None = None  # float32 (68, 2), source-frame pixels
    image_to_face_mat: np.ndarray | None = None  # float64 (2, 3), frame -> aligned face
    eyebrows_expand_mod: float | None = None
    seg_ie_polys: Any = None  # {'polys': [{'type', 'pts'}]} or the old list of (type, pts)
    xseg_mask_buf: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    image_hw: tuple[int, int] | None = None
    # key -> (value as stored, value as converted at load): lets to_dict() write untouched values back
    # byte-for-byte (e.g. landmarks stored as Python float lists rather than as float32 arrays).
    _loaded: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def resolved_face_type(self) -> str:
        """The face type DeepFaceLab uses for this file (``full_face`` when the key is missing)."""
        return self.face_type or DEFAULT_FACE_TYPE

    @property
    def has_xseg(self) -> bool:
        return self.xseg_mask_buf is not None

    @property
    def resolved_eyebrows_expand_mod(self) -> float:
        return 1.0 if self.eyebrows_expand_mod is None else float(self.eyebrows_expand_mod)

    def xseg_mask(self) -> np.ndarray | None:
        """The decoded XSeg mask, float32 (H, W, 1) in [0, 1] at its stored size, or None."""
        if self.xseg_mask_buf is None:
            return None
        return decode_xseg_mask(self.xseg_mask_buf)

    def ie_polys(self) -> list[tuple[int, np.ndarray]]:
        """XSeg editor polygons as (type, float32 (N, 2) points); type 1 includes, 0 excludes.

        Reads both the current ``{'polys': [...]}`` layout and the older list of ``(type, pts)``.
        """
        polys = self.seg_ie_polys
        if polys is None:
            return []
        try:
            if isinstance(polys, dict):
                polys = [(p["type"], p["pts"]) for p in polys.get("polys", [])]
            return [(int(kind), np.asarray(pts, dtype=np.float32).reshape(-1, 2)) for kind, pts in polys]
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise DFLFormatError(f"seg_ie_polys is malformed ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str, image_hw: tuple[int, int] | None = None) -> DFLMeta:
        """Build from an unpickled APP15 dict; malformed known keys raise DFLFormatError naming ``source``."""
        meta = cls(has_metadata=bool(data), image_hw=image_hw)
        for key, value in data.items():
            if key not in _FIELD_FOR_KEY:
                meta.extra[key] = value
                continue
            if value is None:
                continue
            converted = _convert(key, value, source)
            setattr(meta, _FIELD_FOR_KEY[key], converted)
            meta._loaded[key] = (value, copy.deepcopy(converted))
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The dict DeepFaceLab expects in APP15; None values are dropped, as DeepFaceLab's writer does."""
        out: dict[str, Any] = {}
        for key in KNOWN_KEYS:
            value = getattr(self, _FIELD_FOR_KEY[key])
            if value is None:
                continue
            if key in self._loaded and _same(value, self._loaded[key][1]):
                out[key] = self._loaded[key][0]
            else:
                out[key] = _to_stored(key, value)
        out.update({k: v for k, v in self.extra.items() if v is not None})
        return out


def _convert(key: str, value: Any, source: str) -> Any:
    """Stored value -> the dataclass's type; DFLFormatError when the stored value has the wrong shape."""
    try:
        if key in ("landmarks", "source_landmarks"):
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != (68, 2):
                raise ValueError(f"shape {arr.shape}, expected (68, 2)")
            return arr
        if key == "image_to_face_mat":
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (2, 3):
                raise ValueError(f"shape {arr.shape}, expected (2, 3)")
            return arr
        if key == "source_rect":
            return np.asarray(value)
        if key == "xseg_mask":
            arr = np.asarray(value)
            if arr.dtype != np.uint8:
                raise ValueError(f"dtype {arr.dtype}, expected uint8 encoded image bytes")
            return arr
        if key == "eyebrows_expand_mod":
            return float(value)
        if key in ("face_type", "source_filename") and not isinstance(value, str):
            raise ValueError(f"a {type(value).__name__}, expected a string")
        return value
    except (TypeError, ValueError) as exc:
        raise DFLFormatError(f"{source}: metadata key {key!r} is malformed ({exc})") from exc


def _to_stored(key: str, value: Any) -> Any:
    """A dataclass value -> what DeepFaceLab stores for ``key`` (e.g. landmarks as lists of floats)."""
    if key in ("landmarks", "source_landmarks"):
        return np.asarray(value, dtype=np.float32).astype(np.float64).tolist()
    if key == "image_to_face_mat":
        return np.asarray(value, dtype=np.float64)
    if key == "eyebrows_expand_mod":
        return float(value)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b)
        )
    try:
        return bool(a == b)
    except Exception:  # e.g. nested containers holding arrays: treat as changed, re-encode
        return False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DFLFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def load_meta(path: str | Path) -> DFLMeta:
    """Read a face JPEG's metadata without decoding the image.

    Not a JPEG, truncated, empty, or a corrupt / unsafe pickle raise DFLFormatError naming the file;
    a valid JPEG without APP15 gives ``has_metadata=False``.
    """
    path = Path(path)
    return meta_from_bytes(_read(path), str(path))


def meta_from_bytes(data: bytes, source: str) -> DFLMeta:
    """:func:`load_meta` for a file already in memory (``source`` names it in errors)."""
    segments = list_segments(data, source)
    if not any(s.marker in SOF_MARKERS for s in segments) or not any(s.marker == SOS for s in segments):
        raise DFLFormatError(f"{source}: JPEG has no image frame or scan")
    image_hw = frame_shape(segments, data)
    app15 = next((s for s in segments if s.marker == APP15), None)
    if app15 is None:
        return DFLMeta(has_metadata=False, image_hw=image_hw)
    loaded = restricted_loads(data[app15.payload_offset : app15.end], source)
    if not isinstance(loaded, dict):
        raise DFLFormatError(f"{source}: APP15 metadata is a {type(loaded).__name__}, expected a dict")
    return DFLMeta.from_dict(loaded, source, image_hw)


def save_meta(path: str | Path, meta: DFLMeta) -> None:
    """Write ``meta`` into the JPEG at ``path``, replacing its APP15 segment; the image bytes are kept.

    The file is replaced atomically: on any failure (payload over 65533 bytes, disk errors) the
    original is left byte-identical. Metadata with no keys left removes the APP15 segment (DeepFaceLab
    reads a JPEG without APP15 as an empty dict, so this is the same to it, and the file shrinks back).
    """
    path = Path(path)
    target = _write_target(path)
    data = meta_into_bytes(_read(target), meta, str(path))
    remove_stale_temp_files(target)
    try:
        info = target.stat()
        with atomic_open(target, "wb") as handle:
            _keep_owner(handle.fileno(), info)
            handle.write(data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TorchSAEError(f"{path}: cannot write the face file ({reason}); it is unchanged") from exc


def _write_target(path: Path) -> Path:
    """The file to replace: a symlink is written through (its target is updated, the link stays)."""
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.is_file():
            raise DFLFormatError(f"{path}: a symbolic link to {target}, which is not a file; not written")
        return target
    return path


def _keep_owner(fd: int, info: os.stat_result) -> None:
    """Give the replacement the original's owner and group (where this user may; mode is kept by
    ``atomic_open``)."""
    if hasattr(os, "fchown"):
        try:
            os.fchown(fd, info.st_uid, info.st_gid)
        except OSError:
            pass  # not permitted (not root, another owner): the file is ours now, as any rewrite makes it


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove ``path``'s temp files that a killed write left (``.<name>.XXXXXXXX.tmp`` beside it)."""
    removed = []
    try:
        entries = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match and match.group("name") == path.name and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def meta_into_bytes(data: bytes, meta: DFLMeta, source: str) -> bytes:
    """The JPEG ``data`` with its APP15 segment replaced by ``meta`` (removed when it has no keys)."""
    values = meta.to_dict()
    payload = None
    if values:
        try:
            payload = compat_dumps(values)
        except (TypeError, AttributeError, ValueError) as exc:
            raise DFLFormatError(f"{source}: metadata cannot be written ({exc})") from exc
    return replace_app15(data, payload, source)


def encode_xseg_mask(mask: np.ndarray) -> np.ndarray:
    """Encode a [0, 1] mask the way DeepFaceLab's ``set_xseg_mask`` does; returns the imencode array.

    One channel; ``clip(mask*255, 0, 255).astype(uint8)`` (truncation, so 0.999 -> 254); PNG, or when
    the PNG is over 50000 bytes the first JPEG of quality 100, 99, ... 0 that fits (lossy).
    """
    arr = np.asarray(mask)
    if arr.dtype.kind not in "f":
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DFLFormatError(f"xseg mask of shape {arr.shape}: expected (H, W) or (H, W, C)")
    if not np.isfinite(arr[..., :1]).all():
        raise DFLFormatError("xseg mask holds NaN or infinite values: values must be in [0, 1]")
    img = np.clip(arr[..., :1] * 255, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    if ok and buf.size <= XSEG_MAX_BYTES:
        return buf
    for quality in range(100, -1, -1):
        ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        if ok and buf.size <= XSEG_MAX_BYTES:
            return buf
    raise DFLFormatError(f"xseg mask of shape {arr.shape} does not fit in {XSEG_MAX_BYTES} bytes")


def decode_xseg_mask(buf: np.ndarray | bytes, source: str = "xseg_mask") -> np.ndarray:
    """Decode a stored mask like DeepFaceLab's ``get_xseg_mask``: float32 (H, W, 1) / 255, no resize."""
    raw = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, bytes | bytearray) else np.asarray(buf)
    if raw.size == 0:
        raise DFLFormatError(f"{source}: stored xseg_mask is empty")
    img = cv2.imdecode(raw.reshape(-1).astype(np.uint8, copy=False), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DFLFormatError(f"{source}: stored xseg_mask is not a decodable PNG or JPEG")
    if img.ndim == 2:
        img = img[..., None]
    return img[..., :1].astype(np.float32) / 255.0


def set_xseg_mask(path: str | Path, mask: np.ndarray | None) -> None:
    """Store (or with None, remove) the XSeg mask of the face at ``path``; atomic, image untouched."""
    meta = load_meta(path)
    try:
        meta.xseg_mask_buf = None if mask is None else encode_xseg_mask(mask)
    except DFLFormatError as exc:
        raise DFLFormatError(f"{path}: {exc}") from exc
    save_meta(path, meta)
