"""JPEG decoding to the working resolution with libjpeg-turbo's DCT scaling (torch-free).

Why DCT scaling: a DeepFaceLab faceset is usually 512² JPEGs while training runs at 128 or 256.
libjpeg-turbo can run the inverse DCT at M/8 of the full size (M = 1..16), which skips most of the
decoding work and lands exactly on R for 512 → 128/256. Only when no M/8 scale equals R do we decode to
the smallest scale ≥ R and resize the rest of the way with ``cv2.INTER_CUBIC`` — the interpolation
DeepFaceLab's SampleProcessor uses for images (spec §5, "cubic for images, linear for masks").

Torch-free so the index builder's worker processes start fast.
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg


def decoded_size(data: bytes, resolution: int) -> tuple[int, int]:
    """(height, width) that DCT-scaled decoding produces for ``resolution`` (before any resize)."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data, min_height=resolution, min_width=resolution)
    return height, width


def decode_bgr(data: bytes, resolution: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode JPEG bytes to uint8 BGR (R, R, 3), DCT-scaled to the smallest scale ≥ R, then cubic-resized.

    ``out`` (optional, (R, R, 3) uint8, C-contiguous) receives the result, without a copy when the
    DCT scale hits R exactly. Raises ValueError on a corrupt or truncated JPEG (simplejpeg ``strict``).
    """
    height, width = decoded_size(data, resolution)
    if height == resolution and width == resolution and out is not None:
        return simplejpeg.decode_jpeg(
            data, colorspace="BGR", min_height=resolution, min_width=resolution, buffer=out, strict=True
        )
    image = simplejpeg.decode_jpeg(
        data, colorspace="BGR", min_height=resolution, min_width=resolution, strict=True
    )
    if image.shape[0] != resolution or image.shape[1] != resolution:
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_CUBIC)
    if out is not None:
        out[...] = image
        return out
    return image


def decode_recropped(
    data: bytes, resolution: int, mat: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode JPEG bytes at full size and warp them to the model's face type: uint8 BGR (R, R, 3).

    ``mat`` is the index's (2, 3) re-crop affine from the file's pixels to the R² crop
    (``FacesetIndex.recrop``). As DeepFaceLab does for images (spec §5, "Crop"): cubic interpolation
    and a replicated border, so a crop that reaches past the stored image smears its edge instead of
    going black. Full size because a re-crop to a tighter face type magnifies the stored crop.
    """
    image = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    size = (resolution, resolution)
    warped = cv2.warpAffine(
        image, np.asarray(mat, np.float64), size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if out is not None:
        out[...] = warped
        return out
    return warped


def decode_sample(
    data: bytes, resolution: int, mat: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """One index row's training image: re-cropped where ``mat`` is a finite (2, 3) affine, else the
    fast DCT-scaled path (``decode_bgr``). A NaN ``mat`` (the index's "no re-crop" row) means resize."""
    if mat is not None and np.isfinite(mat).all():
        return decode_recropped(data, resolution, mat, out)
    return decode_bgr(data, resolution, out)
