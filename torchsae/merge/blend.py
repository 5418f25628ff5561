"""Pasting a swapped face back into its frame: DeepFaceLab's merger basics (``MergeMasked``), on the CPU.

Per face, at the model's crop resolution R ("pixels of the face"):

1. the mask is chosen (``mask_mode``, DeepFaceLab's names) and values under 1/255 are zeroed;
2. ``erode_mask_modifier`` erodes (> 0) or dilates (< 0) it with an elliptical kernel of that many
   pixels, on the mask zero-padded by R on every side; the padded mask is then zeroed outside the
   crop plus half the blur, and ``blur_mask_modifier`` blurs it (Gaussian, odd kernel of that size),
   so the blurred mask fades to zero at the crop's edge;
3. mask (linear) and face (cubic) are warped into the frame by the inverse of the frame -> crop matrix;
4. ``overlay``: frame·(1 − m) + face·m. ``seamless``: OpenCV's Poisson ``seamlessClone`` (NORMAL_CLONE)
   inside the mask thresholded at the first of 0.1, 0.2 … that leaves pixels, centred on that mask's
   box, then the same alpha blend with m (so the blurred edge still fades). A clone OpenCV refuses
   (mask touching the frame border) falls back to overlay and is counted.

Colour transfer (``color_transfer_mode``) runs before this, batched on the device (``merge.run``).
All work is inside the face's bounding box in the frame, so the cost does not grow with frame size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from torchsae.dfl.geometry import transform_points
from torchsae.errors import TorchSAEError

MODES = ("overlay", "seamless")
# DeepFaceLab's mask_mode names; xseg-dst is the aligned file's stored (applied) XSeg mask, dst its
# landmark hull (the file's mask when it has no XSeg mask: torchsae.dfl.masks, policy 'xseg').
MASK_MODES = (
    "dst",
    "learned-prd",
    "learned-dst",
    "learned-prd*learned-dst",
    "learned-prd+learned-dst",
    "xseg-dst",
    "learned-prd*learned-dst*xseg-dst",
)
COLOR_TRANSFER_MODES = ("none", "rct", "lct", "mkl", "idt", "sot")


@dataclass(frozen=True)
class MergeOptions:
    """The merger's settings; names and defaults are DeepFaceLab's ``MergerConfigMasked`` ones."""

    mode: str = "overlay"
    mask_mode: str = "learned-prd*learned-dst"
    erode_mask_modifier: int = 0  # pixels of the face crop; < 0 dilates
    blur_mask_modifier: int = 0  # pixels of the face crop
    output_face_scale: int = 0  # percent: the paste matrix is scaled by 1 + 0.01·value
    color_transfer_mode: str = "rct"

    def validate(self) -> MergeOptions:
        for name, value, allowed in (
            ("mode", self.mode, MODES),
            ("mask_mode", self.mask_mode, MASK_MODES),
            ("color_transfer_mode", self.color_transfer_mode, COLOR_TRANSFER_MODES),
        ):
            if value not in allowed:
                raise TorchSAEError(f"{name} {value!r}: must be one of {', '.join(allowed)}")
        if not -400 <= self.erode_mask_modifier <= 400:
            raise TorchSAEError(f"erode_mask_modifier {self.erode_mask_modifier}: must be in -400..400")
        if not 0 <= self.blur_mask_modifier <= 400:
            raise TorchSAEError(f"blur_mask_modifier {self.blur_mask_modifier}: must be in 0..400")
        if not -50 <= self.output_face_scale <= 50:
            raise TorchSAEError(f"output_face_scale {self.output_face_scale}: must be in -50..50")
        return self

    @property
    def face_scale(self) -> float:
        return 1.0 + 0.01 * self.output_face_scale

    @property
    def needs_ground_truth(self) -> bool:
        return "dst" in self.mask_mode.replace("learned-dst", "")


def choose_mask(
    mode: str, swap_mask: np.ndarray, face_mask: np.ndarray, gt_mask: np.ndarray | None
) -> np.ndarray:
    """The (R, R) float32 mask of ``mode`` from the learned swap/A masks and the file's mask."""
    learned = {
        "learned-prd": swap_mask,
        "learned-dst": face_mask,
        "learned-prd*learned-dst": swap_mask * face_mask,
        "learned-prd+learned-dst": np.clip(swap_mask + face_mask, 0, 1),
    }
    if mode in learned:
        return np.asarray(learned[mode], np.float32)
    if gt_mask is None:
        raise TorchSAEError(f"mask_mode {mode}: needs the aligned face's mask")
    if mode in ("dst", "xseg-dst"):
        return np.asarray(gt_mask, np.float32)
    return np.asarray(swap_mask * face_mask * gt_mask, np.float32)


def process_mask(mask: np.ndarray, erode: int, blur: int) -> np.ndarray:
    """Steps 1–2 of the module doc on an (R, R) mask; returns float32 (R, R) in [0, 1]."""
    mask = np.asarray(mask, np.float32).copy()
    mask[mask < 1.0 / 255.0] = 0.0
    if erode == 0 and blur == 0:
        return mask
    size = mask.shape[0]
    padded = np.pad(mask, size)
    if erode > 0:
        padded = cv2.erode(padded, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (erode, erode)), iterations=1)
    elif erode < 0:
        padded = cv2.dilate(
            padded, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (-erode, -erode)), iterations=1
        )
    clip = size + blur // 2
    padded[:clip, :] = 0
    padded[-clip:, :] = 0
    padded[:, :clip] = 0
    padded[:, -clip:] = 0
    if blur > 0:
        blur = blur + (1 - blur % 2)
        padded = cv2.GaussianBlur(padded, (blur, blur), 0)
    return np.clip(padded[size:-size, size:-size], 0.0, 1.0)


def _roi(mat: np.ndarray, resolution: int, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Frame box (x0, y0, x1, y1) covering the crop's footprint (+2 px for the filters), or None."""
    corners = np.array([[0, 0], [resolution, 0], [resolution, resolution], [0, resolution]], np.float64)
    pts = transform_points(corners, mat, invert=True)
    x0, y0 = np.floor(pts.min(0)).astype(int) - 2
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, hw[1]), min(y1, hw[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _seamless_mask(mask: np.ndarray) -> np.ndarray | None:
    """DeepFaceLab's seamless mask: 1 where the mask exceeds the first of 0.1..0.9 with any pixel."""
    for i in range(1, 10):
        above = mask > i / 10.0
        if above.any():
            return above
    return None


def paste_face(
    frame: np.ndarray, face: np.ndarray, mask: np.ndarray, mat: np.ndarray, mode: str = "overlay"
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Paste one processed face into ``frame`` (uint8 BGR (H, W, 3), changed in place and returned).

    ``face`` (R, R, 3) float32 in [0, 1]; ``mask`` (R, R) float32 after :func:`process_mask`; ``mat``
    the (2, 3) frame -> crop affine. Returns (frame, the mask in frame pixels (H, W) float32, whether
    seamless fell back to overlay).
    """
    h, w = frame.shape[:2]
    full_mask = np.zeros((h, w), np.float32)
    resolution = face.shape[0]
    box = _roi(mat, resolution, (h, w))
    if box is None or not mask.any():
        return frame, full_mask, False
    x0, y0, x1, y1 = box
    local = mat.copy()
    local[:, 2] += mat[:, :2] @ np.array([x0, y0], np.float64)  # crop = M·(p_roi + offset)
    size = (x1 - x0, y1 - y0)
    flags = cv2.WARP_INVERSE_MAP
    m = cv2.warpAffine(mask, local, size, flags=flags | cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    m = np.clip(m, 0.0, 1.0)
    m[m < 1.0 / 255.0] = 0.0
    roi = frame[y0:y1, x0:x1]
    base = roi.astype(np.float32) / 255.0
    pasted = cv2.warpAffine(
        np.ascontiguousarray(face, np.float32),
        local,
        size,
        dst=base.copy(),
        flags=flags | cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_TRANSPARENT,
    )
    pasted = np.clip(pasted, 0.0, 1.0)
    fell_back = False
    if mode == "seamless":
        cloned = _seamless(frame, pasted, m, box)
        if cloned is None:
            fell_back = True
        else:
            pasted = cloned
    alpha = m[:, :, None]
    out = base * (1.0 - alpha) + pasted * alpha
    roi[...] = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    full_mask[y0:y1, x0:x1] = m
    return frame, full_mask, fell_back


def _seamless(frame: np.ndarray, pasted: np.ndarray, m: np.ndarray, box) -> np.ndarray | None:
    """Poisson-clone ``pasted`` (ROI, float) into ``frame`` under the thresholded mask; the ROI result."""
    hard = _seamless_mask(m)
    if hard is None:
        return None
    x0, y0, x1, y1 = box
    hard_u8 = hard.astype(np.uint8) * 255
    left, top, bw, bh = cv2.boundingRect(hard_u8)
    centre = (int(x0 + left + bw / 2), int(y0 + top + bh / 2))
    src = np.clip(pasted * 255.0 + 0.5, 0, 255).astype(np.uint8)
    try:
        cloned = cv2.seamlessClone(src, frame, hard_u8, centre, cv2.NORMAL_CLONE)
    except cv2.error:
        return None
    return cloned[y0:y1, x0:x1].astype(np.float32) / 255.0
