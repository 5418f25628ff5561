"""Aligned faces as the merger sees them: metadata, the frame they came from, and their crop matrix.

Why the stored ``image_to_face_mat``: DeepFaceLab's extractor records the affine that cut each aligned
face out of its frame (frame pixels -> aligned-face pixels). Composed with the re-crop to the model's
face type (``torchsae.dfl.geometry.recrop_mat``) or a plain resize, it gives the frame -> model-crop
matrix that both cuts the A face for the model and pastes the swap back (its inverse).

Faces that cannot be merged are skipped and counted by reason, never fatal: no DeepFaceLab metadata,
an unreadable file, no ``source_filename`` or ``image_to_face_mat``, a singular matrix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchsae.dfl.geometry import SHORT_FACE_TYPES, recrop_mat
from torchsae.dfl.meta import DFLMeta, load_meta
from torchsae.errors import TorchSAEError

FACE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_DET = 1e-8  # |det| of the 2x2 part below this: a singular (degenerate) face matrix


@dataclass
class AlignedFace:
    """One aligned face file and what merging needs from its metadata."""

    path: Path
    meta: DFLMeta

    @property
    def source_filename(self) -> str:
        return str(self.meta.source_filename)

    @property
    def size(self) -> int:
        """Side of the stored aligned image, in pixels (what ``image_to_face_mat`` maps onto)."""
        if self.meta.image_hw is None:
            raise TorchSAEError(f"{self.path}: image size unknown")
        return int(self.meta.image_hw[0])


@dataclass
class FaceScan:
    """The usable faces of a folder, grouped by source frame, and the skipped ones counted by reason."""

    faces: list[AlignedFace]
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one file, for the message

    def skip(self, reason: str, path: Path) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, path.name)

    def by_frame(self) -> dict[str, list[AlignedFace]]:
        """source_filename -> its faces, in file-name order."""
        groups: dict[str, list[AlignedFace]] = {}
        for face in self.faces:
            groups.setdefault(face.source_filename, []).append(face)
        return groups

    def summary(self) -> str:
        """``skipped 2 faces: 1 no metadata (x.jpg), 1 singular matrix (y.jpg)`` or ''."""
        if not self.skipped:
            return ""
        parts = [f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in sorted(self.skipped.items())]
        return f"skipped {sum(self.skipped.values())} faces: " + ", ".join(parts)


def list_images(folder: Path, suffixes: tuple[str, ...] = FACE_SUFFIXES) -> list[Path]:
    """Image files of a folder in name order (hidden files and other suffixes ignored)."""
    if not folder.is_dir():
        raise TorchSAEError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))


def singular(mat: np.ndarray | None) -> bool:
    """True for a missing, non-finite or degenerate (2, 3) affine."""
    if mat is None:
        return True
    mat = np.asarray(mat, dtype=np.float64)
    return mat.shape != (2, 3) or not np.isfinite(mat).all() or abs(np.linalg.det(mat[:, :2])) < MIN_DET


def scan_faces(folder: str | Path, *, need_frame: bool = True) -> FaceScan:
    """Read every aligned face's metadata; with ``need_frame`` also require source_filename and a
    usable ``image_to_face_mat`` (what merging needs; swapping alone needs neither)."""
    scan = FaceScan([])
    for path in list_images(Path(folder)):
        try:
            meta = load_meta(path)
        except (TorchSAEError, OSError):
            scan.skip("unreadable", path)
            continue
        if not meta.has_metadata or meta.image_hw is None:
            scan.skip("without DeepFaceLab metadata", path)
            continue
        if need_frame:
            if not meta.source_filename:
                scan.skip("without source_filename", path)
                continue
            if singular(meta.image_to_face_mat):
                scan.skip("with a missing or singular image_to_face_mat", path)
                continue
        scan.faces.append(AlignedFace(path, meta))
    return scan


def file_to_model_mat(face: AlignedFace, resolution: int, face_type: str) -> np.ndarray:
    """(2, 3) affine from the aligned file's pixels to the model's ``resolution`` crop of ``face_type``."""
    meta = face.meta
    mat = None
    file_type = meta.resolved_face_type
    if SHORT_FACE_TYPES.get(face_type, face_type) != SHORT_FACE_TYPES.get(file_type, file_type):
        if meta.landmarks is None:
            raise TorchSAEError(
                f"{face.path}: no landmarks to re-crop {file_type} to the model's {face_type}"
            )
        mat = recrop_mat(meta.landmarks, file_type, resolution, face_type)
    if mat is None:
        # a resize, with cv2.resize's pixel-centre convention (what training decoded the faces with):
        # pixel centres i + 0.5 scale, so x_R = (x + 0.5)·s − 0.5
        s = resolution / face.size
        mat = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5]])
    return np.asarray(mat, dtype=np.float64)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) affine ``outer ∘ inner`` (apply ``inner`` first)."""
    return outer[:, :2] @ inner + np.hstack([np.zeros((2, 2)), outer[:, 2:]])


def scale_about_centre(mat: np.ndarray, resolution: int, scale: float) -> np.ndarray:
    """DeepFaceLab's output face scale: the crop covers 1/scale of the frame region (scale > 1 shrinks
    the pasted face, as ``get_transform_mat(..., scale)`` does), about the crop's centre."""
    if scale == 1.0:
        return mat
    c = resolution / 2.0
    about = np.array([[scale, 0.0, c - scale * c], [0.0, scale, c - scale * c]])
    return compose(about, mat)


def frame_to_model_mat(face: AlignedFace, resolution: int, face_type: str) -> np.ndarray:
    """(2, 3) affine from frame pixels to the model's crop: file_to_model ∘ image_to_face_mat."""
    mat = compose(
        file_to_model_mat(face, resolution, face_type), np.asarray(face.meta.image_to_face_mat, np.float64)
    )
    if singular(mat):
        raise TorchSAEError(f"{face.path}: singular frame-to-face matrix")
    return mat
