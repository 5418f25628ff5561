"""Small per-sample loss terms shared by the SAEHD and adversarial losses (spec §3).

Every function returns one value per sample (shape (N,)), float32: DeepFaceLab builds its loss as a
per-sample vector and differentiates its sum, so reductions over the batch happen in exactly one
place (:class:`torchsae.losses.saehd.SAEHDLoss`). Callers run these inside
:func:`torchsae.losses.filters.fp32_region` or pass float32 tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torchsae.losses.filters import fp32_region, gaussian_blur


def mean_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the first, in fp32: ``tf.reduce_mean(x, axis=[1, 2, 3])``."""
    return x.float().flatten(1).mean(dim=1)


def mse_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean((a - b)²)`` per sample."""
    return mean_per_sample((a.float() - b.float()).square())


def mae_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean(|a - b|)`` per sample."""
    return mean_per_sample((a.float() - b.float()).abs())


def style_loss(content: torch.Tensor, style: torch.Tensor, sigma: float, weight: float) -> torch.Tensor:
    """DeepFaceLab's style loss per sample: matches per-channel spatial mean and std of two images.

    Both inputs are blurred with DFL's Gaussian (σ = ``sigma``, skipped when σ ≤ 0), then
    ``std = sqrt(var + 1e-5)`` (population variance) and
    ``loss = (Σ_c Δmean² + Σ_c Δstd²) · weight / C``. Used by SAEHD's face_style term with σ = res//8,
    so only the colour distribution inside the face is transferred, not its detail.
    """
    if content.shape[1] != style.shape[1]:
        raise ValueError(f"style_loss: channel counts differ ({content.shape[1]} vs {style.shape[1]})")
    with fp32_region(content.device):
        content = content.float()
        style = style.float()
        if sigma > 0:
            content = gaussian_blur(content, sigma)
            style = gaussian_blur(style, sigma)
        c_var, c_mean = torch.var_mean(content, dim=(2, 3), correction=0)
        s_var, s_mean = torch.var_mean(style, dim=(2, 3), correction=0)
        c_std = torch.sqrt(c_var + 1e-5)
        s_std = torch.sqrt(s_var + 1e-5)
        per_sample = (c_mean - s_mean).square().sum(dim=1) + (c_std - s_std).square().sum(dim=1)
        return per_sample * (weight / content.shape[1])


def total_variation_mse(images: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between vertical and horizontal neighbours, per sample."""
    x = images.float()
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).square().flatten(1).sum(dim=1)
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).square().flatten(1).sum(dim=1)
    return dy + dx


def bce_with_logits_per_sample(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Sigmoid cross-entropy against a constant label, averaged over C, H, W: DFL's ``DLoss``."""
    x = logits.float()
    target = torch.full_like(x, float(label))
    return mean_per_sample(F.binary_cross_entropy_with_logits(x, target, reduction="none"))
