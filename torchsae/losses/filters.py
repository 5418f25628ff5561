"""Gaussian filters as DeepFaceLab's losses use them (spec §3), and the fp32 guard for loss maths.

Two different Gaussians live in DeepFaceLab and both matter bit-for-bit:

* the **SSIM window**: softmax of ``-(x² + y²) / (2σ²)`` over ``fs × fs`` taps centred at
  ``(fs - 1) / 2`` (so an even ``fs`` gives a window centred between two pixels), used with a VALID
  convolution;
* the **blur** used on masks (and by the style and ``blur_out_mask`` terms): kernel size
  ``max(3, int(4σ))`` made odd, centre ``floor(k / 2)``, normalised, zero padding ``k // 2``.

Both 2-D kernels are outer products of a normalised 1-D kernel with itself (the softmax of a sum of a
row term and a column term factorises), so we filter separably: two 1-D depthwise convolutions cost
``2·fs`` multiply-adds per pixel instead of ``fs²``. That matters for the style blur (σ = res//8, a
65-tap kernel at 128 px) and the DSSIM windows at 384 px (33 taps). The result equals the 2-D
convolution up to float rounding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


@contextlib.contextmanager
def fp32_region(device: torch.device) -> Iterator[None]:
    """Disable autocast for the enclosed loss maths.

    Why: SSIM subtracts nearly equal local moments (E[x²] - E[x]²); in bf16/fp16 that difference is
    mostly rounding noise, and sums over a 384² image lose digits. DeepFaceLab computes its losses in
    fp32, so we do too, whatever precision the model ran in. Callers also cast their inputs with
    ``.float()``; autocast would otherwise cast them back down inside conv2d.
    """
    with torch.autocast(device_type=device.type, enabled=False):
        yield


@lru_cache(maxsize=64)
def ssim_window_1d(filter_size: int, sigma: float = 1.5) -> np.ndarray:
    """The 1-D factor of DeepFaceLab's SSIM window: softmax of ``-x²/(2σ²)``, x centred at (fs-1)/2."""
    if filter_size < 1:
        raise ValueError(f"SSIM filter size must be >= 1, got {filter_size}")
    x = np.arange(filter_size, dtype=np.float64) - (filter_size - 1) / 2.0
    logits = -(x**2) / (2.0 * sigma**2)
    w = np.exp(logits - logits.max())
    return (w / w.sum()).astype(np.float32)


def blur_kernel_size(sigma: float) -> int:
    """DeepFaceLab's blur kernel size: ``max(3, int(4σ))``, plus one when even (σ=1 → 5, σ=2 → 9)."""
    size = max(3, int(4 * sigma))
    return size + 1 if size % 2 == 0 else size


@lru_cache(maxsize=64)
def blur_kernel_1d(sigma: float) -> np.ndarray:
    """The 1-D factor of DeepFaceLab's blur kernel: Gaussian centred at floor(k/2), normalised."""
    size = blur_kernel_size(sigma)
    x = np.arange(size, dtype=np.float64) - math.floor(size / 2)
    w = np.exp(-(x**2) / (2.0 * sigma**2))
    return (w / w.sum()).astype(np.float32)


_TAPS_CACHE: dict[tuple[bytes, torch.device, torch.dtype], torch.Tensor] = {}


def _taps_tensor(taps: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``taps`` as a tensor on ``device``, cached.

    Why cache: copying a host array to a GPU is a blocking copy that waits for the stream, and the
    losses filter a dozen times per step; one copy per (kernel, device, dtype) keeps the step free of
    host syncs. Created outside inference mode so a kernel first used by an evaluation under
    ``torch.inference_mode`` can still be saved for backward in training.
    """
    key = (np.ascontiguousarray(taps).tobytes(), device, dtype)
    cached = _TAPS_CACHE.get(key)
    if cached is None:
        with torch.inference_mode(False):
            cached = torch.tensor(np.asarray(taps), dtype=dtype).to(device)
        _TAPS_CACHE[key] = cached
    return cached


@contextlib.contextmanager
def kernel_cache_scope() -> Iterator[None]:
    """Forget the filter kernels cached inside the block when it ends (the cache is restored).

    For runs under ``FakeTensorMode`` (the memory estimate): the cache is keyed by device, and a fake
    "cpu" kernel left in it would turn a later real CPU step's gradients fake.
    """
    before = dict(_TAPS_CACHE)
    try:
        yield
    finally:
        _TAPS_CACHE.clear()
        _TAPS_CACHE.update(before)


def separable_filter(x: torch.Tensor, taps: np.ndarray, padding: int) -> torch.Tensor:
    """Depthwise 2-D filter of NCHW ``x`` with the kernel ``outer(taps, taps)``, zero padding ``padding``.

    ``padding=0`` is TensorFlow's VALID. One grouped conv per direction handles every channel at once.
    """
    channels = x.shape[1]
    k = _taps_tensor(taps, x.device, x.dtype)
    size = k.numel()
    horizontal = k.view(1, 1, 1, size).expand(channels, 1, 1, size)
    vertical = k.view(1, 1, size, 1).expand(channels, 1, size, 1)
    x = F.conv2d(x, horizontal, padding=(0, padding), groups=channels)
    return F.conv2d(x, vertical, padding=(padding, 0), groups=channels)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """DeepFaceLab's ``gaussian_blur``: same-size output, zero padding (edges darken towards 0)."""
    taps = blur_kernel_1d(float(sigma))
    return separable_filter(x, taps, padding=len(taps) // 2)


def mask_blur_sigma(resolution: int) -> int:
    """σ_m = max(1, res // 32): the blur applied to the GT masks before masking images (spec §3)."""
    return max(1, resolution // 32)


def soft_dilate_mask(mask: torch.Tensor, resolution: int) -> torch.Tensor:
    """``m_blur = clip(blur(m, σ_m), 0, 0.5)·2``: a soft dilation, every pixel blurred to ≥ 0.5 becomes 1.

    Why: masking the loss with this slightly larger, feathered mask trains the face edge and a thin
    rim of background, so the merged swap blends without a hard seam.
    """
    return gaussian_blur(mask, mask_blur_sigma(resolution)).clamp(0.0, 0.5) * 2.0


def blur_out_mask(target: torch.Tensor, mask: torch.Tensor, resolution: int) -> torch.Tensor:
    """Replace the background of ``target`` by a blur of the background around the face (spec §3).

    DeepFaceLab's ``blur_out_mask`` option rewrites the *targets* before any loss: with s = res/128,
    ``bg = blur(t·(1-m), s) / where(1-blur(m, s) == 0, 1, 1-blur(m, s))`` (a normalised convolution:
    only background pixels contribute) and ``t ← t·m + bg·(1-m)``. The trainer applies this to
    ``target_a`` and ``target_b`` (with ``mask_a`` / ``mask_b``, unblurred) when the option is on, so
    the model is not asked to reproduce sharp background detail it cannot know. Computed in fp32.
    """
    with fp32_region(target.device):
        t = target.float()
        m = mask.float()
        sigma = resolution / 128.0
        background = gaussian_blur(t * (1.0 - m), sigma)
        weight = 1.0 - gaussian_blur(m, sigma)
        weight = torch.where(weight == 0, torch.ones_like(weight), weight)
        return t * m + (background / weight) * (1.0 - m)
