"""Face-crop geometry (spec §1.3): which affine takes a frame (or another crop) to an aligned face.

Why: DeepFaceLab stores each face already cropped for one face type; training a model of another face
type re-crops from the landmarks, and tools map points between frame and face. The similarity fit is
Umeyama's closed form (Umeyama 1991, "Least-squares estimation of transformation parameters between
two point patterns"); the padding and centre rules are the spec's.

The 33-point mean-face template is *estimated*, not copied: for every fixture face the stored
``image_to_face_mat`` and landmarks give the template-space position of landmarks 17-48 and 54 once
the known padding is undone, and ``_TEMPLATE`` is their mean over the six fixtures (spread between
fixtures at most 0.01 template units). Re-computed crops put the landmarks within 0.11 px of
DeepFaceLab's at 512 px, even for a fixture left out of the estimate (tests/test_dfl_geometry.py):
not bit-exact, but ample for re-cropping to another face type.
"""

from __future__ import annotations

import numpy as np

from torchsae.dfl.errors import DFLFormatError

# DeepFaceLab face type -> padding of the unit square (spec §1.3).
FACE_TYPE_PADDING: dict[str, float] = {
    "half_face": 0.0,
    "midfull_face": 0.0675,
    "full_face": 0.2109375,
    "full_face_no_align": 0.2109375,
    "whole_face": 0.40,
    "head": 0.70,
    "head_no_align": 0.70,
}
# TorchSAE's config names (ModelConfig.face_type) -> DeepFaceLab's.
SHORT_FACE_TYPES: dict[str, str] = {
    "h": "half_face",
    "mf": "midfull_face",
    "f": "full_face",
    "wf": "whole_face",
    "head": "head",
}
WHOLE_FACE_CENTRE_SHIFT = 0.07  # whole_face: the centre moves up by 7% of the unpadded square's side
TEMPLATE_LANDMARKS = np.array([*range(17, 49), 54])  # brows, nose, eyes and one mouth corner

_TEMPLATE = np.array(
    [
        [-0.01585, 0.13209],
        [0.06346, 0.05479],
        [0.17399, 0.02749],
        [0.28717, 0.03550],
        [0.39204, 0.07234],
        [0.58928, 0.07080],
        [0.69615, 0.03394],
        [0.80783, 0.02663],
        [0.91649, 0.05508],
        [0.99280, 0.13188],
        [0.49164, 0.19516],
        [0.49186, 0.28839],
        [0.49219, 0.38037],
        [0.49264, 0.47636],
        [0.36486, 0.56784],
        [0.42622, 0.58553],
        [0.49053, 0.60099],
        [0.55485, 0.58554],
        [0.61446, 0.56848],
        [0.10888, 0.23192],
        [0.17689, 0.18895],
        [0.25769, 0.18859],
        [0.32724, 0.23928],
        [0.25299, 0.25244],
        [0.17238, 0.25332],
        [0.65116, 0.23918],
        [0.72201, 0.18780],
        [0.80212, 0.18919],
        [0.86818, 0.23178],
        [0.80734, 0.25294],
        [0.72778, 0.25245],
        [0.24824, 0.78252],
        [0.72864, 0.78204],
    ],
    dtype=np.float64,
)


def transform_points(points: np.ndarray, mat: np.ndarray, invert: bool = False) -> np.ndarray:
    """Apply a (2, 3) affine (or its inverse) to (N, 2) points; returns float64 (N, 2)."""
    mat = np.asarray(mat, dtype=np.float64)
    if invert:
        mat = invert_affine(mat)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ mat[:, :2].T + mat[:, 2]


def invert_affine(mat: np.ndarray) -> np.ndarray:
    """The inverse of a (2, 3) affine."""
    full = np.vstack([np.asarray(mat, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` onto ``dst``.

    Umeyama's closed form: the SVD of the cross-covariance, with the reflection removed. Returns (2, 3).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float((sigma * signs).sum() / variance) if variance > 0 else 1.0
    translation = mu_dst - scale * rotation @ mu_src
    return np.hstack([scale * rotation, translation[:, None]])


def _affine_from_3_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) affine taking 3 points onto 3 points."""
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T


def face_transform_mat(landmarks: np.ndarray, size: int, face_type: str) -> np.ndarray:
    """The (2, 3) affine from the image holding ``landmarks`` (68, 2) to a ``size``-px face crop.

    ``face_type`` is a DeepFaceLab name (``whole_face``) or a TorchSAE short name (``wf``). ``head``
    is refused: its yaw-dependent sideways shift needs a 3D pose estimate we do not have.
    """
    face_type = SHORT_FACE_TYPES.get(face_type, face_type)
    if face_type not in FACE_TYPE_PADDING:
        raise DFLFormatError(f"face type {face_type!r}: not one of {', '.join(FACE_TYPE_PADDING)}")
    if face_type.startswith("head"):
        raise DFLFormatError(f"face type {face_type!r}: re-cropping to head is not supported")
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise DFLFormatError(f"landmarks of shape {lm.shape}: expected (68, 2)")
    to_template = umeyama(lm[TEMPLATE_LANDMARKS], _TEMPLATE)
    # The unit square's corners (tl, tr, br, bl) and centre, taken back into the image.
    tl, tr, br, bl, centre = transform_points(
        [(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0.5)], to_template, invert=True
    )
    if face_type == "whole_face":
        centre = centre + (tl - bl) * WHOLE_FACE_CENTRE_SHIFT
    half_diag = np.linalg.norm(br - tl) * (FACE_TYPE_PADDING[face_type] * np.sqrt(2.0) + 0.5)
    if face_type.endswith("_no_align"):
        down, across = np.array([1.0, 1.0]) / np.sqrt(2.0), np.array([1.0, -1.0]) / np.sqrt(2.0)
    else:
        down = (br - tl) / np.linalg.norm(br - tl)
        across = (tr - bl) / np.linalg.norm(tr - bl)
    corners = np.array([centre - down * half_diag, centre + across * half_diag, centre + down * half_diag])
    return _affine_from_3_points(corners, np.array([(0.0, 0.0), (size, 0.0), (size, size)]))


def recrop_mat(
    landmarks: np.ndarray, file_face_type: str, resolution: int, face_type: str | None
) -> np.ndarray | None:
    """The (2, 3) affine from a stored face crop to a ``resolution`` crop of another face type.

    None when ``face_type`` is None or names the file's own type: then DeepFaceLab just resizes (cubic
    for images, linear for masks). Otherwise it warps with this matrix (images: cubic, replicate
    border; masks: linear, zero border). Short and long face type names are both accepted.
    """
    if face_type is None:
        return None
    wanted = SHORT_FACE_TYPES.get(face_type, face_type)
    if wanted == SHORT_FACE_TYPES.get(file_face_type, file_face_type):
        return None
    return face_transform_mat(landmarks, resolution, wanted)
