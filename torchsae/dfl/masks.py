"""Face masks from DeepFaceLab metadata: the landmark hull, the eyes-and-mouth mask, and both at the
training resolution.

Why here and not in the data pipeline: the side index (``pipelines.index``) computes these once per
file on the CPU, and every backend then gathers them from the index. :func:`face_masks_at` is the
one implementation of "masks of this file at resolution R" (the index, previews and the merger use
it); it follows DeepFaceLab's ``SampleProcessor`` (spec §5) so a faceset trains on the masks DeepFaceLab
would give it.
"""

from __future__ import annotations

import cv2
import numpy as np

from torchsae.config import MASK_POLICIES
from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.geometry import recrop_mat
from torchsae.dfl.meta import DFLMeta, decode_xseg_mask

# Landmark groups (68-point iBUG layout) whose convex hulls together make the face hull. Each tuple
# lists index ranges [start, stop); every group is anchored on the chin tip (8) so the hulls overlap
# into one region while concave gaps between jaw, brows and nose stay outside.
_CHIN = (8, 9)
_HULL_GROUPS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 9), (17, 18)),  # right jaw half + outer end of the right brow
    ((8, 17), (26, 27)),  # left jaw half + outer end of the left brow
    ((17, 20), _CHIN),  # right brow outer part
    ((24, 27), _CHIN),  # left brow outer part
    ((19, 25), _CHIN),  # the brows' inner parts over the nose ridge
    ((17, 22), (27, 28), (31, 36), _CHIN),  # right brow, nose top and nostrils
    ((22, 27), (27, 28), (31, 36), _CHIN),  # left brow, nose top and nostrils
    ((27, 31), (31, 36)),  # nose
)
EYES_MOUTH_GROUPS = ((36, 42), (42, 48), (60, 68))  # right eye, left eye, inner mouth


def _expanded_brows(landmarks: np.ndarray, eyebrows_expand_mod: float) -> np.ndarray:
    """Integer landmarks with the brows pushed up by ``mod * 0.5 * (brow - eye top)``.

    Each brow point is moved away from the point below it: the inner four points of a brow pair with
    the eye's corner and upper lid (36-39, 42-45); the outermost pair with a point a quarter of the
    way from the eye's outer corner towards the jaw's end (0 or 16). As in DeepFaceLab the points
    are truncated to integers first and the arithmetic is integer (floor) halving, then the moved
    brows are truncated again; the fixtures' hull masks match this pixel for pixel.
    """
    pts = np.asarray(landmarks).astype(np.int32)
    right_outer = (pts[36] + (pts[36] + pts[0]) // 2) // 2
    left_outer = (pts[45] + (pts[45] + pts[16]) // 2) // 2
    below = np.concatenate([right_outer[None], pts[36:40], pts[42:46], left_outer[None]])
    brows = pts[17:27]
    pts[17:27] = brows + eyebrows_expand_mod * 0.5 * (brows - below)
    return pts


def _fill_hull(mask: np.ndarray, points: np.ndarray) -> None:
    cv2.fillConvexPoly(mask, cv2.convexHull(np.ascontiguousarray(points, dtype=np.int32)), (1,))


def hull_mask(
    landmarks: np.ndarray, shape_hw: tuple[int, int], eyebrows_expand_mod: float = 1.0
) -> np.ndarray:
    """The landmark hull mask (DeepFaceLab's fallback FULL_FACE mask), float32 (H, W, 1) in {0, 1}."""
    pts = _expanded_brows(landmarks, eyebrows_expand_mod)
    mask = np.zeros(tuple(shape_hw), dtype=np.float32)
    for group in _HULL_GROUPS:
        _fill_hull(mask, np.concatenate([pts[a:b] for a, b in group]))
    return mask[..., None]


def eyes_mouth_mask(landmarks: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Soft eyes + mouth mask, float32 (H, W, 1) in [0, 1], before the multiply by the face mask.

    Each of the eye and mouth masks is its filled hull, dilated with an ellipse of size h//32 and
    Gaussian-blurred with an odd kernel of about h//16 (h = the image height); they are added and
    clipped. Why windows: the work happens only in a window around each hull, wide enough that the
    dilation and the blur never reach its edge, so the result equals the whole-image computation
    bit for bit (checked against DeepFaceLab's outputs) at a fraction of the cost.
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    pts = np.asarray(landmarks).astype(np.int32)
    dilate = h // 32
    blur = h // 16
    blur += 1 - blur % 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilate, dilate)) if dilate > 0 else None
    margin = dilate + blur + 2
    out = np.zeros((h, w), dtype=np.float32)
    for groups in (EYES_MOUTH_GROUPS[:2], EYES_MOUTH_GROUPS[2:]):  # both eyes in one mask, mouth in another
        hull_pts = np.concatenate([pts[a:b] for a, b in groups])
        x0, y0 = np.maximum(hull_pts.min(axis=0) - margin, 0)
        x0 -= x0 % 64  # keep OpenCV's SIMD column blocks where the whole-image filter has them
        x1, y1 = np.minimum(hull_pts.max(axis=0) + margin + 1, (w, h))
        if x0 >= x1 or y0 >= y1:  # the hulls lie entirely outside the image
            continue
        part = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
        for a, b in groups:
            _fill_hull(part, pts[a:b] - (x0, y0))
        if kernel is not None:
            part = cv2.dilate(part, kernel, iterations=1)
        out[y0:y1, x0:x1] += cv2.GaussianBlur(part, (blur, blur), 0)
    return np.clip(out, 0, 1)[..., None]


def _face_mask_at_image_size(
    meta: DFLMeta, image_hw: tuple[int, int], policy: str, source: str
) -> np.ndarray:
    """The FULL_FACE mask at the face image's own size, float32 (H, W, 1), chosen by ``policy``.

    ``xseg``: the XSeg mask when the file has one, else the landmark hull (DeepFaceLab's rule);
    ``hull``: always the landmark hull; ``full``: the whole image; ``require``: the XSeg mask, and a
    file without one is an error.
    """
    if policy not in MASK_POLICIES:
        raise DFLFormatError(f"{source}: unknown mask policy {policy!r} (one of {', '.join(MASK_POLICIES)})")
    h, w = int(image_hw[0]), int(image_hw[1])
    if policy == "full":
        return np.ones((h, w, 1), dtype=np.float32)
    if policy in ("xseg", "require") and meta.has_xseg:
        mask = decode_xseg_mask(meta.xseg_mask_buf, source)
        if mask.shape[:2] != (h, w):  # DeepFaceLab: cubic to the face size, then clip the overshoot
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, 1)
        return np.clip(mask, 0.0, 1.0)
    if policy == "require":
        raise DFLFormatError(f"{source}: no XSeg mask, and mask_policy 'require' needs one")
    if meta.landmarks is None:
        raise DFLFormatError(f"{source}: no landmarks to build a hull mask from (no DeepFaceLab metadata?)")
    return hull_mask(meta.landmarks, (h, w), meta.resolved_eyebrows_expand_mod)


def _to_resolution(mask: np.ndarray, resolution: int, mat: np.ndarray | None = None) -> np.ndarray:
    """An (H, W, 1) mask at (R, R, 1): resized linearly, or warped by ``mat`` (linear, zero border)
    when the model's face type differs from the file's, as DeepFaceLab does for masks."""
    size = (resolution, resolution)
    if mat is not None:
        out = cv2.warpAffine(
            mask, mat, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    elif mask.shape[:2] == size:
        return mask
    else:
        out = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
    return out.reshape(resolution, resolution, 1)


def _recrop(meta: DFLMeta, resolution: int, face_type: str | None, source: str) -> np.ndarray | None:
    if face_type is None:
        return None
    if meta.landmarks is None:
        raise DFLFormatError(f"{source}: no landmarks, cannot re-crop to face type {face_type!r}")
    try:
        return recrop_mat(meta.landmarks, meta.resolved_face_type, resolution, face_type)
    except DFLFormatError as exc:
        raise DFLFormatError(f"{source}: {exc}") from exc


def face_masks_at(
    meta: DFLMeta,
    image_hw: tuple[int, int],
    resolution: int,
    policy: str = "xseg",
    source: str = "face",
    face_type: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(FULL_FACE, EYES_MOUTH) masks of one face at ``resolution``, each float32 (R, R, 1) in [0, 1].

    DeepFaceLab's ``SampleProcessor`` with the model's face type equal to the file's and no
    augmentation: both masks are built at the face image size, the eyes-mouth mask is cut to where the
    face mask is non-zero, both are resized linearly to ``resolution``, and the eyes-mouth mask is
    divided by its maximum. Matches the fixtures in ``tests/fixtures/dfl/sampleproc_r128`` bit for bit.
    With ``face_type`` (the model's, e.g. ``'f'``) differing from the file's, both are re-cropped
    with :func:`torchsae.dfl.geometry.recrop_mat` instead of resized.
    """
    mat = _recrop(meta, resolution, face_type, source)
    full = _face_mask_at_image_size(meta, image_hw, policy, source)
    if meta.landmarks is not None:
        em = eyes_mouth_mask(meta.landmarks, image_hw) * (full != 0)
    else:  # only reachable with policy 'full': no landmarks, so no eyes or mouth to prioritise
        em = np.zeros_like(full)
    full = _to_resolution(full, resolution, mat)
    em = _to_resolution(em.astype(np.float32), resolution, mat)
    peak = float(em.max())
    if peak > 0:
        em = em / peak
    return full, em
