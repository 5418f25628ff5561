"""OpenCV's float colour-space conversions (BGR ↔ Lab, BGR ↔ HSV), batched in torch.

DeepFaceLab does its colour work with ``cv2.cvtColor`` on float32 BGR images in [0, 1]; reproducing
OpenCV's float definitions here lets the augmentation run batched on the training device and still
match DeepFaceLab's numbers (the tests compare against ``cv2.cvtColor``).

Definitions (OpenCV documentation, "Color conversions"), all tensors NCHW with channels B, G, R:

* Lab (``COLOR_BGR2Lab`` for float): sRGB gamma is removed (inputs clipped to [0, 1] first), linear RGB
  → XYZ with the sRGB/D65 matrix, X and Z divided by the D65 white point, then
  ``L = 116·f(Y) − 16`` (``903.3·Y`` for Y ≤ 0.008856), ``a = 500·(f(X) − f(Y))``,
  ``b = 200·(f(Y) − f(Z))`` with ``f(t) = t^(1/3)`` or ``7.787·t + 16/116``. L is in [0, 100].
  The inverse clips the linear RGB to [0, 1] before the gamma, as OpenCV does.
* HSV (``COLOR_BGR2HSV`` for float): V = max, S = (V − min)/V, H in degrees [0, 360).
"""

from __future__ import annotations

import torch

# sRGB (linear) -> XYZ, D65; rows X, Y, Z; columns R, G, B.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_X = 0.950456
_WHITE_Z = 1.088754
_LAB_T = 0.008856
_LAB_K = 903.3
_LAB_SLOPE = 7.787
_LAB_OFFSET = 16.0 / 116.0
_EPS = 1.1920929e-07  # FLT_EPSILON, OpenCV's guard in the float HSV conversion


def _matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """RGB→XYZ with the white point folded in, reordered to act on BGR channels."""
    mat = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
    mat[0] /= _WHITE_X
    mat[2] /= _WHITE_Z
    return mat.flip(1).to(dtype=dtype, device=device)


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)


def _apply(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply every pixel's 3-vector by ``mat`` ([3, 3]); x is [n, 3, H, W]."""
    return torch.einsum("ij,njhw->nihw", mat, x)


def bgr_to_lab(bgr: torch.Tensor) -> torch.Tensor:
    """Float BGR in [0, 1] → OpenCV float Lab (L 0..100, a/b about ±127); NCHW."""
    xyz = _apply(_matrix(bgr.dtype, bgr.device), _srgb_to_linear(bgr))

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > _LAB_T, t.clamp_min(0.0) ** (1.0 / 3.0), _LAB_SLOPE * t + _LAB_OFFSET)

    fx, fy, fz = f(xyz[:, 0]), f(xyz[:, 1]), f(xyz[:, 2])
    y = xyz[:, 1]
    lum = torch.where(y > _LAB_T, 116.0 * fy - 16.0, _LAB_K * y)
    return torch.stack([lum, 500.0 * (fx - fy), 200.0 * (fy - fz)], 1)


def lab_to_bgr(lab: torch.Tensor) -> torch.Tensor:
    """OpenCV float Lab → BGR in [0, 1] (linear RGB clipped before the sRGB gamma); NCHW."""
    lum, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    low = lum <= _LAB_K * _LAB_T
    y = torch.where(low, lum / _LAB_K, ((lum + 16.0) / 116.0) ** 3)
    fy = torch.where(low, _LAB_SLOPE * y + _LAB_OFFSET, (lum + 16.0) / 116.0)

    def f_inv(t: torch.Tensor) -> torch.Tensor:
        threshold = _LAB_SLOPE * _LAB_T + _LAB_OFFSET
        return torch.where(t <= threshold, (t - _LAB_OFFSET) / _LAB_SLOPE, t**3)

    xyz = torch.stack([f_inv(a / 500.0 + fy), y, f_inv(fy - b / 200.0)], 1)
    inverse = torch.linalg.inv(_matrix(torch.float64, lab.device)).to(lab.dtype)
    return _linear_to_srgb(_apply(inverse, xyz))


def bgr_to_hsv(bgr: torch.Tensor) -> torch.Tensor:
    """Float BGR → OpenCV float HSV: H in degrees [0, 360), S and V in [0, 1]; NCHW."""
    b, g, r = bgr[:, 0], bgr[:, 1], bgr[:, 2]
    value, _ = bgr.max(1)
    diff = value - bgr.min(1).values
    sat = diff / (value.abs() + _EPS)
    scale = 60.0 / (diff + _EPS)
    hue = torch.where(
        value == r,
        (g - b) * scale,
        torch.where(value == g, (b - r) * scale + 120.0, (r - g) * scale + 240.0),
    )
    hue = torch.where(hue < 0, hue + 360.0, hue)
    return torch.stack([hue, sat, value], 1)


def hsv_to_bgr(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV float HSV (H in degrees) → BGR; NCHW.

    The closed form of the six-sector formula: channel = V − V·S·clip(min(k, 4 − k), 0, 1) with
    k = (n + H/60) mod 6 and n = 5, 3, 1 for R, G, B — one broadcast over the channel axis instead
    of six masked selections.
    """
    hue, sat, value = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    offsets = torch.tensor([1.0, 3.0, 5.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = torch.remainder(offsets + hue / 60.0, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value - value * sat * ramp
