"""DSSIM, DeepFaceLab's blur and the small loss terms against independent references.

References: scikit-image's SSIM (Gaussian weights, population covariances) where its window equals
DFL's (fs = 11: skimage truncates σ=1.5 at 3.5σ, an 11-tap normalised Gaussian, which is exactly the
softmax window), and for every other size a direct 2-D numpy implementation written from the textbook
formulas (σ² and σ_ab notation, non-separable window), in float64. The ``ref_*`` functions are reused
by tests/test_losses_saehd.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import structural_similarity

from torchsae.losses import (
    bce_with_logits_per_sample,
    blur_kernel_size,
    blur_out_mask,
    dssim,
    dssim_filter_sizes,
    gaussian_blur,
    saehd_dssim,
    soft_dilate_mask,
    ssim_per_channel,
    style_loss,
    total_variation_mse,
)

# ----------------------------------------------------------------------------- numpy references


def ref_ssim_window(fs: int, sigma: float = 1.5) -> np.ndarray:
    """2-D softmax of -(x²+y²)/(2σ²) over fs×fs, centre (fs-1)/2 (spec §3)."""
    c = np.arange(fs) - (fs - 1) / 2
    e = -(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma**2)
    return np.exp(e) / np.exp(e).sum()


def ref_correlate_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """VALID 2-D correlation of an (H, W) image, written with explicit windows."""
    return np.einsum("ijkl,kl->ij", sliding_window_view(img, kernel.shape), kernel)


def ref_ssim(a: np.ndarray, b: np.ndarray, fs: int) -> float:
    """Textbook SSIM (population covariances) of two (H, W) float64 images, mean over VALID."""
    w = ref_ssim_window(fs)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = ref_correlate_valid(a, w), ref_correlate_valid(b, w)
    var_a = ref_correlate_valid(a * a, w) - mu_a**2
    var_b = ref_correlate_valid(b * b, w) - mu_b**2
    cov = ref_correlate_valid(a * b, w) - mu_a * mu_b
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    return float((lum * cs).mean())


def ref_dssim(a: np.ndarray, b: np.ndarray, fs: int) -> np.ndarray:
    """Per-sample DSSIM of (N, C, H, W) arrays: mean over channels of (1 - SSIM)/2."""
    return np.array(
        [
            np.mean([(1 - ref_ssim(x[c], y[c], fs)) / 2 for c in range(x.shape[0])])
            for x, y in zip(a, b, strict=True)
        ]
    )


def ref_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """DFL blur of (N, C, H, W): size max(3, int(4σ)) made odd, centre k//2, normalised, zero pad."""
    k = max(3, int(4 * sigma))
    k += 1 - k % 2
    c = k // 2
    i = np.arange(k)
    kern = np.exp(-((i[:, None] - c) ** 2 + (i[None, :] - c) ** 2) / (2 * sigma**2))
    kern /= kern.sum()
    padded = np.pad(img, ((0, 0), (0, 0), (c, c), (c, c)))
    out = np.empty(img.shape, dtype=np.float64)
    for n in range(img.shape[0]):
        for ch in range(img.shape[1]):
            out[n, ch] = ref_correlate_valid(padded[n, ch], kern)
    return out


def ref_soft_dilate(mask: np.ndarray, res: int) -> np.ndarray:
    return np.clip(ref_blur(mask, max(1, res // 32)), 0, 0.5) * 2


def ref_style(content: np.ndarray, style: np.ndarray, sigma: float, weight: float) -> np.ndarray:
    c, s = ref_blur(content, sigma), ref_blur(style, sigma)
    c_mean, s_mean = c.mean(axis=(2, 3)), s.mean(axis=(2, 3))
    c_std, s_std = np.sqrt(c.var(axis=(2, 3)) + 1e-5), np.sqrt(s.var(axis=(2, 3)) + 1e-5)
    return (((c_mean - s_mean) ** 2).sum(1) + ((c_std - s_std) ** 2).sum(1)) * weight / content.shape[1]


def ref_bce(logits: np.ndarray, label: float) -> np.ndarray:
    """-[y·log σ(x) + (1-y)·log(1-σ(x))], mean over C, H, W."""
    p = 1 / (1 + np.exp(-logits))
    loss = -(label * np.log(p) + (1 - label) * np.log(1 - p))
    return loss.reshape(len(logits), -1).mean(1)


def pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two correlated images in [0, 1], so SSIM is neither ~0 nor ~1."""
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(0.7 * a + 0.3 * rng.random(shape), 0, 1)
    return a, b


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


# ----------------------------------------------------------------------------- DSSIM


def test_ssim_matches_scikit_image_at_fs11() -> None:
    a, b = pair((2, 3, 32, 32))
    ours = ssim_per_channel(t(a), t(b), filter_size=11).numpy()
    for n in range(2):
        for c in range(3):
            ref = structural_similarity(
                a[n, c].astype(np.float32).astype(np.float64),
                b[n, c].astype(np.float32).astype(np.float64),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            assert ours[n, c] == pytest.approx(ref, abs=2e-6)


@pytest.mark.parametrize("fs", [2, 5, 8, 11, 16, 22])
def test_dssim_matches_direct_2d_reference(fs: int) -> None:
    a, b = pair((2, 3, 40, 36), seed=fs)
    ours = dssim(t(a), t(b), filter_size=fs).numpy()
    np.testing.assert_allclose(ours, ref_dssim(a.astype(np.float32), b.astype(np.float32), fs), atol=2e-6)


def test_dssim_identical_is_zero_and_shape_is_per_sample() -> None:
    a, _ = pair((3, 3, 24, 24))
    out = dssim(t(a), t(a), filter_size=11)
    assert out.shape == (3,) and out.dtype == torch.float32
    assert torch.allclose(out, torch.zeros(3), atol=1e-6)


@pytest.mark.parametrize(
    ("res", "expected"),
    [(128, [(11, 10.0)]), (224, [(19, 10.0)]), (256, [(22, 5.0), (11, 5.0)]), (384, [(33, 5.0), (16, 5.0)])],
)
def test_dssim_filter_sizes_follow_the_spec(res: int, expected: list) -> None:
    assert dssim_filter_sizes(res) == expected


def test_saehd_dssim_at_256_uses_two_windows() -> None:
    a, b = pair((1, 1, 256, 256), seed=3)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    expected = 5 * ref_dssim(a32, b32, 22) + 5 * ref_dssim(a32, b32, 11)
    np.testing.assert_allclose(saehd_dssim(t(a), t(b), 256).numpy(), expected, rtol=1e-5)


def test_dssim_rejects_windows_larger_than_the_image() -> None:
    a, b = pair((1, 3, 8, 8))
    with pytest.raises(ValueError, match="filter size"):
        dssim(t(a), t(b), filter_size=11)


# ----------------------------------------------------------------------------- blur and masks


@pytest.mark.parametrize(("sigma", "size"), [(0.5, 3), (1, 5), (1.5, 7), (2, 9), (3, 13), (4, 17), (16, 65)])
def test_blur_kernel_sizes(sigma: float, size: int) -> None:
    # max(3, int(4σ)), +1 when even: σ=1 -> 4 -> 5; σ=0.5 -> max(3, 2) = 3.
    assert blur_kernel_size(sigma) == size


@pytest.mark.parametrize("sigma", [1, 2, 1.5])
def test_gaussian_blur_matches_reference(sigma: float) -> None:
    x, _ = pair((2, 3, 20, 17))
    np.testing.assert_allclose(
        gaussian_blur(t(x), sigma).numpy(), ref_blur(x.astype(np.float32), sigma), atol=1e-6
    )


def test_gaussian_blur_sigma1_by_hand() -> None:
    # A unit impulse blurred with σ=1 reproduces the 5×5 kernel: exp(-(i²+j²)/2) / Σ.
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    i = np.arange(-2, 3)
    kern = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / 2.0)
    kern /= kern.sum()
    out = gaussian_blur(x, 1).numpy()[0, 0]
    np.testing.assert_allclose(out[2:7, 2:7], kern, atol=1e-7)
    assert np.count_nonzero(out) == 25


def test_soft_dilate_mask_matches_reference_and_saturates() -> None:
    m = np.zeros((1, 1, 64, 64))
    m[:, :, 16:48, 16:48] = 1.0
    ours = soft_dilate_mask(t(m), 64).numpy()
    np.testing.assert_allclose(ours, ref_soft_dilate(m, 64), atol=1e-6)
    assert ours[0, 0, 32, 32] == 1.0 and ours[0, 0, 16, 32] == 1.0  # blur ≥ 0.5 -> 1 (edge pixel)
    assert 0.5 < ours[0, 0, 16, 16] < 1.0  # a corner only reaches ~0.36 before the ×2
    assert ours[0, 0, 0, 0] == 0.0 and 0.0 < ours[0, 0, 14, 32] < 1.0  # soft rim outside the edge


def test_blur_out_mask_matches_reference() -> None:
    rng = np.random.default_rng(5)
    target = rng.random((2, 3, 32, 32))
    mask = np.zeros((2, 1, 32, 32))
    mask[:, :, 8:24, 6:20] = 1.0
    mask[1, :, 0:4, :] = 0.6  # soft values too
    s = 32 / 128
    bg = ref_blur(target * (1 - mask), s)
    w = 1 - ref_blur(mask, s)
    w = np.where(w == 0, 1, w)
    expected = target * mask + bg / w * (1 - mask)
    np.testing.assert_allclose(blur_out_mask(t(target), t(mask), 32).numpy(), expected, atol=2e-6)


def test_blur_out_mask_keeps_face_and_ignores_face_colour_in_background() -> None:
    target = torch.full((1, 3, 64, 64), 0.2)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:44, 20:44] = 1.0
    target[..., 20:44, 20:44] = 0.9  # bright face on a flat background
    out = blur_out_mask(target, mask, 256)  # σ = 2
    assert torch.equal(out[..., 20:44, 20:44], target[..., 20:44, 20:44])
    # Normalised convolution: the background next to the face stays the background value.
    assert torch.allclose(out[..., 19, 30], torch.full((1, 3), 0.2), atol=1e-5)


# ----------------------------------------------------------------------------- terms


def test_style_loss_matches_reference() -> None:
    a, b = pair((2, 3, 32, 32), seed=7)
    b = b * 0.5 + 0.2
    ours = style_loss(t(a), t(b), sigma=4, weight=100.0).numpy()
    np.testing.assert_allclose(
        ours, ref_style(a.astype(np.float32), b.astype(np.float32), 4, 100.0), rtol=1e-4
    )


def test_style_loss_without_blur_by_hand() -> None:
    # Constant images: std = sqrt(1e-5) on both sides, so only the mean difference counts.
    a = torch.full((1, 2, 8, 8), 0.25)
    b = torch.full((1, 2, 8, 8), 0.75)
    assert style_loss(a, b, sigma=0, weight=3.0).item() == pytest.approx((0.25 + 0.25) * 3.0 / 2)


def test_total_variation_mse_by_hand() -> None:
    x = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    # vertical: (2-0)² + (2-1)² + (2-3)² = 6; horizontal: 1 + 4 + 0 + 0 = 5
    assert total_variation_mse(x).tolist() == [11.0]


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_bce_with_logits_per_sample(label: float) -> None:
    logits = np.random.default_rng(1).normal(size=(3, 1, 4, 4)) * 3
    np.testing.assert_allclose(
        bce_with_logits_per_sample(t(logits), label).numpy(), ref_bce(logits, label), rtol=1e-5
    )


def test_kernel_first_used_under_inference_mode_still_trains() -> None:
    # The filter taps are cached per device; a cache entry made during an inference_mode evaluation
    # (previews, scores) must not be an inference tensor, or training could not save it for backward.
    a, b = pair((1, 3, 24, 24), seed=9)
    with torch.inference_mode():
        dssim(t(a), t(b), filter_size=7)
    x = t(b).requires_grad_(True)
    dssim(t(a), x, filter_size=7).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
