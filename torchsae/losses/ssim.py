"""SSIM and DSSIM exactly as DeepFaceLab computes them (spec §3), in fp32 whatever the autocast state.

Per channel, with local means μ and second moments from the Gaussian window (VALID convolution):

    l  = (2·μa·μb + c1) / (μa² + μb² + c1)
    cs = (2·E[ab] - 2·μa·μb + c2) / (E[a²] + E[b²] - μa² - μb² + c2)
    SSIM = mean over the valid positions of l·cs,   c1 = (k1·max_val)², c2 = (k2·max_val)²

which is Wang et al.'s SSIM with population (not sample) covariances, i.e. scikit-image's
``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``. DSSIM is
``(1 - SSIM) / 2`` averaged over channels, one value per sample.
"""

from __future__ import annotations

import torch

from torchsae.losses.filters import fp32_region, separable_filter, ssim_window_1d


def ssim_per_channel(
    a: torch.Tensor,
    b: torch.Tensor,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    max_val: float = 1.0,
) -> torch.Tensor:
    """SSIM of NCHW ``a`` and ``b`` per sample and channel, shape (N, C), float32."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"ssim needs two NCHW tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if min(a.shape[-2:]) < filter_size:
        raise ValueError(f"ssim filter size {filter_size} exceeds the image size {tuple(a.shape[-2:])}")
    with fp32_region(a.device):
        a = a.float()
        b = b.float()
        channels = a.shape[1]
        # One grouped convolution over all five moment maps at once.
        stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
        moments = separable_filter(stacked, ssim_window_1d(filter_size, float(sigma)), padding=0)
        mu_a, mu_b, e_aa, e_bb, e_ab = moments.split(channels, dim=1)
        c1 = (k1 * max_val) ** 2
        c2 = (k2 * max_val) ** 2
        mu_ab2 = 2.0 * mu_a * mu_b
        mu_sq = mu_a * mu_a + mu_b * mu_b
        luminance = (mu_ab2 + c1) / (mu_sq + c1)
        contrast_structure = (2.0 * e_ab - mu_ab2 + c2) / (e_aa + e_bb - mu_sq + c2)
        return (luminance * contrast_structure).mean(dim=(2, 3))


def dssim(
    a: torch.Tensor,
    b: torch.Tensor,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    max_val: float = 1.0,
) -> torch.Tensor:
    """DeepFaceLab's DSSIM per sample: mean over channels of ``(1 - SSIM) / 2``, shape (N,), float32.

    σ stays 1.5 whatever ``filter_size`` is (a large window is mostly near-zero taps), as in DFL.
    """
    s = ssim_per_channel(a, b, filter_size, sigma, k1, k2, max_val)
    return ((1.0 - s) / 2.0).mean(dim=1)


def dssim_filter_sizes(resolution: int) -> list[tuple[int, float]]:
    """The (filter size, weight) pairs of SAEHD's reconstruction DSSIM term for ``resolution``.

    res < 256: one window, int(res/11.6), weight 10. res ≥ 256: int(res/11.6) and int(res/23.2),
    weight 5 each (128 → [(11, 10)], 256 → [(22, 5), (11, 5)], 384 → [(33, 5), (16, 5)]).
    """
    if resolution < 256:
        return [(int(resolution / 11.6), 10.0)]
    return [(int(resolution / 11.6), 5.0), (int(resolution / 23.2), 5.0)]


def saehd_dssim(target: torch.Tensor, prediction: torch.Tensor, resolution: int) -> torch.Tensor:
    """SAEHD's weighted DSSIM reconstruction term per sample (shape (N,)) for ``resolution``."""
    total = None
    for filter_size, weight in dssim_filter_sizes(resolution):
        term = weight * dssim(target, prediction, filter_size=filter_size)
        total = term if total is None else total + term
    return total
