"""Per-file work of the index builder: validate one faceset JPEG and draw its masks at resolution R.

Runs in worker processes, so it is torch-free and returns plain picklable values. Every way a file can
be unusable ends in a :class:`Skipped` with a reason a user can act on; nothing here raises for bad
input. The masks themselves come from ``torchsae.dfl.masks`` (the one implementation of DeepFaceLab's
XSeg / landmark-hull / eyes-mouth masks); this module only chooses among them per ``--mask-policy``:

* ``xseg``    XSeg mask if the file has one, else the landmark hull (DeepFaceLab's rule);
* ``hull``    the landmark hull even where an XSeg mask exists;
* ``full``    the whole image for every file (unmasked training; files without metadata are usable);
* ``require`` the XSeg mask; a file without one is skipped.

Under every policy but ``full`` a JPEG without DeepFaceLab metadata is skipped, as DeepFaceLab's
sample loader skips it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from pipelines.decode import decode_bgr
from torchsae.errors import TorchSAEError

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
# Files with these suffixes are listed as skipped (a user may expect them to train); anything else in
# the folder (notes, hidden files) is not a face and is ignored silently.
OTHER_IMAGE_SUFFIXES = frozenset({".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jp2"})
NO_METADATA_DIGEST = "none"


@dataclass(frozen=True)
class Indexed:
    """A usable file: its manifest entry fields, masks (2, R, R) uint8, landmarks (68, 2) or None, and
    the (2, 3) re-crop matrix from the file's pixels to the model's face type at R (None: no re-crop)."""

    entry: dict
    masks: np.ndarray
    landmarks: np.ndarray | None
    recrop: np.ndarray | None = None


@dataclass(frozen=True)
class Skipped:
    """An unusable file and why; ``size``/``mtime_ns`` let an unchanged bad file stay skipped cheaply."""

    name: str
    reason: str
    size: int
    mtime_ns: int


def metadata_digest(data: bytes, source: str) -> str:
    """sha256 of the APP15 payload (``'none'`` without one): what the masks depend on besides pixels."""
    from torchsae.dfl.jpeg import read_app15

    payload = read_app15(data, source)
    return NO_METADATA_DIGEST if payload is None else hashlib.sha256(payload).hexdigest()


def to_uint8(mask: np.ndarray) -> np.ndarray:
    """float mask in [0, 1] (any trailing channel axis) -> uint8 (H, W), rounded."""
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return np.rint(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)


def _draw_masks(
    meta, image_size: int, resolution: int, policy: str, source: str, face_type: str | None
) -> tuple[np.ndarray, str]:
    """(2, R, R) uint8 full-face + eyes-mouth masks (re-cropped to ``face_type`` where it differs from
    the file's) and the name of the full mask's source."""
    from torchsae.dfl.masks import face_masks_at

    if not meta.has_metadata and policy != "full":
        raise ValueError("no DeepFaceLab metadata (no landmarks); --mask-policy full trains on it unmasked")
    full, eyes_mouth = face_masks_at(meta, (image_size, image_size), resolution, policy, source, face_type)
    kind = "full" if policy == "full" else ("xseg" if meta.has_xseg and policy != "hull" else "hull")
    return np.stack([to_uint8(full), to_uint8(eyes_mouth)]), kind


def _without_source(exc: Exception, source: str) -> str:
    """The error's message without a leading ``<path>: `` (the skipped list already names the file)."""
    text = str(exc)
    return text[len(source) + 2 :] if text.startswith(source + ": ") else text


def _recrop_mat(meta, resolution: int, face_type: str | None) -> np.ndarray | None:
    """The file-pixels -> R-pixels affine for the model's ``face_type`` (None: same type, resize)."""
    from torchsae.dfl.geometry import recrop_mat

    if face_type is None or meta.landmarks is None:
        return None
    mat = recrop_mat(meta.landmarks, meta.resolved_face_type, resolution, face_type)
    return None if mat is None else np.asarray(mat, np.float32)


def _landmark_problem(landmarks: np.ndarray | None) -> str | None:
    """Why the stored landmarks cannot place a face (non-finite, or collapsed to a point or a line)."""
    if landmarks is None:
        return None
    points = np.asarray(landmarks, np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        return "unusable landmarks (not 68 finite points)"
    extent = points.max(axis=0) - points.min(axis=0)
    if extent.min() < 1.0:
        return "degenerate landmarks (all on one point or one line); re-extract or remove this face"
    return None


def process_file(path: str, resolution: int, policy: str, face_type: str | None = None) -> Indexed | Skipped:
    """Validate ``path`` and compute its index row; never raises for a bad file.

    ``face_type`` is the model's (short or DeepFaceLab name); files cropped for another face type get
    re-cropped masks and a re-crop matrix (spec §5, "Crop"). Files without DeepFaceLab metadata (only
    usable with policy ``full``) have no known face type and are used as stored.
    """
    name = os.path.basename(path)
    try:
        stat = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return Skipped(name, f"cannot read the file ({exc.strerror})", 0, 0)

    def skip(reason: str) -> Skipped:
        return Skipped(name, reason, stat.st_size, stat.st_mtime_ns)

    if Path(name).suffix.lower() not in JPEG_SUFFIXES:
        return skip("not a JPEG: DeepFaceLab facesets are .jpg files")
    if not data.startswith(b"\xff\xd8"):
        return skip("not a JPEG (no SOI marker at the start)")
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        return skip(f"unreadable JPEG header ({exc})")
    if colorspace in ("CMYK", "YCCK"):
        return skip(f"{colorspace} JPEG: cannot convert to BGR; re-save it as an RGB JPEG")
    if height != width or height < 1:
        return skip(f"not a square face crop ({width}x{height}); masks and landmarks need a square image")
    try:
        decode_bgr(data, resolution)  # strict: a truncated or corrupt scan raises here
    except ValueError as exc:
        return skip(f"corrupt or truncated JPEG ({exc})")

    try:
        from torchsae.dfl.meta import load_meta

        digest = metadata_digest(data, path)
        meta = load_meta(path)
    except TorchSAEError as exc:
        return skip(f"unusable DeepFaceLab metadata ({_without_source(exc, path)})")
    wanted = face_type if meta.has_metadata else None
    problem = _landmark_problem(meta.landmarks) if meta.has_metadata else None
    if problem is not None:
        return skip(problem)
    try:
        masks, kind = _draw_masks(meta, width, resolution, policy, path, wanted)
        recrop = _recrop_mat(meta, resolution, wanted)
    except (TorchSAEError, ValueError, cv2.error) as exc:  # cv2.error: e.g. an empty stored XSeg mask
        return skip(_without_source(exc, path))

    landmarks = None if meta.landmarks is None else np.asarray(meta.landmarks, np.float32)
    entry = {
        "name": name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "digest": digest,
        "face_type": meta.resolved_face_type if meta.has_metadata else None,
        "image_size": width,
        "has_landmarks": landmarks is not None,
        "mask": kind,
        "colorspace": colorspace,
    }
    return Indexed(entry, masks, landmarks, recrop)
