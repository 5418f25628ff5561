"""A DeepFaceLab-style per-sample CPU data path, the baseline of ``benchmarks/data_throughput.py``.

Written from the behaviour described in spec §5 (not from DeepFaceLab's code): each sample is
processed on its own, in float32, at the faceset's full size until the final resize, exactly the
work DeepFaceLab's SampleProcessor does per sample per step:

1. decode the whole JPEG with ``cv2.imread`` and convert to float32 in [0, 1];
2. read the APP15 metadata and unpickle it (our restricted unpickler: the same parsing work);
3. FULL_FACE mask: decode the stored XSeg PNG and resize it to the image size with cubic, or draw the
   landmark hull at full size; EYES_MOUTH mask: hulls, dilation and blur at full size, times the face;
4. draw warp parameters (affine + random-warp grid) for R, resize image (cubic) and masks (linear)
   to R, then ``cv2.remap`` (warped only), ``cv2.warpAffine`` (replicate for images, zero for masks),
   flip, clip;
5. stack the batch.

The masks come from ``torchsae.dfl.masks`` (the project's one implementation of DeepFaceLab's masks).
"""

from __future__ import annotations

import cv2
import numpy as np

from torchsae.dfl.masks import eyes_mouth_mask, hull_mask
from torchsae.dfl.meta import decode_xseg_mask, load_meta


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
    res = params["map_x"].shape[0]
    interp = cv2.INTER_LINEAR if is_mask else cv2.INTER_CUBIC
    if warp:
        image = cv2.remap(image, params["map_x"], params["map_y"], interp)
    border = cv2.BORDER_CONSTANT if is_mask else cv2.BORDER_REPLICATE
    image = cv2.warpAffine(image, params["affine"], (res, res), flags=interp, borderMode=border)
    if params["flip"]:
        image = image[:, ::-1]
    return np.clip(image, 0.0, 1.0)


def face_masks_full_size(path: str, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """FULL_FACE and EYES_MOUTH masks at the image's full size, float32 (H, W)."""
    meta = load_meta(path)
    h, w = image_hw
    if meta.has_xseg:
        full = decode_xseg_mask(meta.xseg_mask_buf)
        if full.shape[:2] != (h, w):
            full = cv2.resize(full, (w, h), interpolation=cv2.INTER_CUBIC)
        full = np.clip(full.reshape(h, w), 0.0, 1.0)
    else:
        full = hull_mask(meta.landmarks, (h, w), meta.resolved_eyebrows_expand_mod)[..., 0]
    em = eyes_mouth_mask(meta.landmarks, (h, w))[..., 0] * (full != 0)
    return full, em.astype(np.float32)


def dfl_sample(path: str, resolution: int, rng: np.random.Generator, augment: bool = True) -> dict:
    """One sample the DeepFaceLab way: warped, target, full-face mask, eyes-mouth mask (float32, HWC)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR).astype(np.float32) / 255.0
    full, em = face_masks_full_size(path, image.shape[:2])
    size = (resolution, resolution)
    image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    full = cv2.resize(full, size, interpolation=cv2.INTER_LINEAR)
    em = cv2.resize(em, size, interpolation=cv2.INTER_LINEAR)
    if not augment:
        return {"warped": image, "target": image, "mask": full, "em": em}
    params = warp_params(resolution, rng)
    em = _transform(em, params, warp=False, is_mask=True)
    peak = em.max()
    return {
        "warped": _transform(image, params, warp=True, is_mask=False),
        "target": _transform(image, params, warp=False, is_mask=False),
        "mask": _transform(full, params, warp=False, is_mask=True),
        "em": em / peak if peak > 0 else em,
    }


def dfl_batch(paths: list[str], resolution: int, rng: np.random.Generator, augment: bool = True) -> dict:
    """A batch the DeepFaceLab way: per-sample processing, then stacking."""
    samples = [dfl_sample(p, resolution, rng, augment) for p in paths]
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
