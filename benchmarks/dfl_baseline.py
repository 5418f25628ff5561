"""A DeepFaceLab-style per-sample CPU data path, the baseline of ``benchmarks/data_throughput.py``.

Written from the behaviour spec §5 describes (not from DeepFaceLab's code). DeepFaceLab keeps each
file's metadata (landmarks, compressed XSeg PNG) in its sample list from start-up, so per step it
pays, per sample, exactly this and nothing more:

1. Load: decode the whole JPEG at full size (``cv2.imread``) and convert to float32 in [0, 1] (§5,
   first bullet), once per sample.
2. Draw ``gen_warp_params`` for R once per sample (§5 table): rotation, scale, shift, flip and the
   random-warp maps (control grid resized with ``cv2.resize`` to w + cell and cropped by cell/2).
3. Then each of the four outputs is produced on its own, as DeepFaceLab's loop over output types does:

   * ``warped``: resize the full image to R (cubic), ``cv2.remap`` through the warp maps (cubic),
     ``cv2.warpAffine`` (cubic, replicate border), flip, clip (§5 "Order");
   * ``target``: resize the full image to R (cubic) again, ``warpAffine``, flip, clip;
   * FULL_FACE mask: decode the XSeg PNG, cubic-resize it to the image size if it differs, clip to
     [0, 1] — or fill the landmark hull at full size (§5 "FULL_FACE mask"); resize to R (linear),
     ``warpAffine`` (linear, zero border), flip, clip;
   * EYES_MOUTH mask: build the FULL_FACE mask AGAIN, fill the eye hulls (36–41, 42–47) and the
     inner-mouth hull (60–67) over the WHOLE full-size image, dilate each with an ellipse of h//32
     and Gaussian-blur it with h//16 made odd (again over the whole image), add, clip, multiply by
     (FULL_FACE ≠ 0) (§5 "EYES_MOUTH mask"); resize to R (linear), ``warpAffine``, flip, clip,
     divide by the maximum.
4. Stack the batch.

The eyes/mouth masks are written out here plainly in their whole-image form on purpose:
``torchsae.dfl.masks.eyes_mouth_mask`` computes the same values in windows around each hull (an
optimisation DeepFaceLab does not have); the tests check that both agree. The landmark hull itself
(only used for files without XSeg) comes from ``torchsae.dfl.masks.hull_mask``, a whole-image form.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from torchsae.dfl.masks import EYES_MOUTH_GROUPS, hull_mask
from torchsae.dfl.meta import decode_xseg_mask, load_meta


@dataclass
class SampleRecord:
    """What DeepFaceLab's sample list holds per file from start-up: path, landmarks, compressed XSeg."""

    path: str
    landmarks: np.ndarray
    xseg_png: bytes | None
    eyebrows_expand_mod: float


def load_record(path: str) -> SampleRecord:
    """Read a file's metadata once (DeepFaceLab does this when it loads the faceset, not per step)."""
    meta = load_meta(path)
    xseg = meta.xseg_mask_buf if meta.has_xseg else None
    return SampleRecord(str(path), np.asarray(meta.landmarks), xseg, meta.resolved_eyebrows_expand_mod)


def warp_params(resolution: int, rng: np.random.Generator) -> dict:
    """Spec §5 ``gen_warp_params`` values for SAEHD: affine, random-warp maps and flip, at ``resolution``."""
    w = resolution
    rotation = rng.uniform(-10, 10)
    scale = rng.uniform(1 / 1.15, 1.15)
    tx, ty = rng.uniform(-0.05, 0.05, size=2)
    cell = w // int(rng.choice([2, 4, 8]))
    count = w // cell + 1
    grid = np.broadcast_to(np.linspace(0, w, count), (count, count)).astype(np.float32)
    map_x, map_y = grid.copy(), grid.T.copy()
    for coords in (map_x, map_y):
        noise = np.clip(rng.normal(size=(count - 2, count - 2)), -2.5, 2.5) / 2.5
        coords[1:-1, 1:-1] += cell * 0.24 * noise.astype(np.float32)
    half = cell // 2
    map_x = cv2.resize(map_x, (w + cell, w + cell), interpolation=cv2.INTER_LINEAR)[
        half : half + w, half : half + w
    ]
    map_y = cv2.resize(map_y, (w + cell, w + cell), interpolation=cv2.INTER_LINEAR)[
        half : half + w, half : half + w
    ]
    affine = cv2.getRotationMatrix2D((w // 2, w // 2), rotation, scale)
    affine[:, 2] += (tx * w, ty * w)
    return {"map_x": map_x, "map_y": map_y, "affine": affine, "flip": rng.integers(10) < 4}


def _transform(image: np.ndarray, params: dict, warp: bool, is_mask: bool) -> np.ndarray:
    """§5 ``warp_by_params``: remap (warped only), warpAffine, flip, clip."""
    res = params["map_x"].shape[0]
    interp = cv2.INTER_LINEAR if is_mask else cv2.INTER_CUBIC
    if warp:
        image = cv2.remap(image, params["map_x"], params["map_y"], interp)
    border = cv2.BORDER_CONSTANT if is_mask else cv2.BORDER_REPLICATE
    image = cv2.warpAffine(image, params["affine"], (res, res), flags=interp, borderMode=border)
    if params["flip"]:
        image = image[:, ::-1]
    return np.clip(image, 0.0, 1.0)


def full_face_mask(record: SampleRecord, h: int, w: int) -> np.ndarray:
    """FULL_FACE at the image size, float32 (H, W): the XSeg mask (cubic to the image size, clipped)
    or, without one, the landmark hull."""
    if record.xseg_png is not None:
        mask = decode_xseg_mask(record.xseg_png)
        if mask.shape[:2] != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.clip(mask.reshape(h, w), 0.0, 1.0)
    return hull_mask(record.landmarks, (h, w), record.eyebrows_expand_mod)[..., 0]


def _feature_mask(points: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """One feature mask over the whole image: filled hulls, ellipse dilation h//32, blur h//16 (odd)."""
    mask = np.zeros((h, w), dtype=np.float32)
    for pts in points:
        cv2.fillConvexPoly(mask, cv2.convexHull(pts), (1,))
    size = h // 32
    if size > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)), iterations=1)
    blur = h // 16
    blur += 1 - blur % 2
    return cv2.GaussianBlur(mask, (blur, blur), 0)


def eyes_mouth_whole_image(landmarks: np.ndarray, h: int, w: int) -> np.ndarray:
    """Eyes + mouth mask over the whole image, float32 (H, W) in [0, 1], before the face multiply."""
    pts = np.asarray(landmarks).astype(np.int32)
    eyes = _feature_mask([pts[a:b] for a, b in EYES_MOUTH_GROUPS[:2]], h, w)
    mouth = _feature_mask([pts[a:b] for a, b in EYES_MOUTH_GROUPS[2:]], h, w)
    return np.clip(eyes + mouth, 0.0, 1.0)


def dfl_sample(
    record: SampleRecord | str, resolution: int, rng: np.random.Generator, augment: bool = True
) -> dict:
    """One sample the DeepFaceLab way: warped, target, full-face mask, eyes-mouth mask (float32, HWC)."""
    if isinstance(record, str):
        record = load_record(record)
    image = cv2.imread(record.path, cv2.IMREAD_COLOR).astype(np.float32) / 255.0
    h, w = image.shape[:2]
    size = (resolution, resolution)
    params = warp_params(resolution, rng) if augment else None

    def finish(x: np.ndarray, warp: bool, is_mask: bool) -> np.ndarray:
        return x if params is None else _transform(x, params, warp, is_mask)

    warped = finish(cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), warp=True, is_mask=False)
    target = finish(cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), warp=False, is_mask=False)
    full = cv2.resize(full_face_mask(record, h, w), size, interpolation=cv2.INTER_LINEAR)
    full = finish(full, warp=False, is_mask=True)
    em = eyes_mouth_whole_image(record.landmarks, h, w) * (full_face_mask(record, h, w) != 0)
    em = finish(cv2.resize(em, size, interpolation=cv2.INTER_LINEAR), warp=False, is_mask=True)
    peak = em.max()
    return {"warped": warped, "target": target, "mask": full, "em": em / peak if peak > 0 else em}


def dfl_batch(
    records: list[SampleRecord | str], resolution: int, rng: np.random.Generator, augment: bool = True
) -> dict:
    """A batch the DeepFaceLab way: per-sample processing, then stacking."""
    samples = [dfl_sample(r, resolution, rng, augment) for r in records]
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
