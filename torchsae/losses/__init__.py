"""SAEHD's losses (spec §3): DSSIM, DeepFaceLab's mask blur, style, adversarial terms, SAEHDLoss.

Modules: ``filters`` (Gaussian windows, blur, soft mask dilation, blur_out_mask), ``ssim`` (SSIM and
DSSIM), ``terms`` (per-sample MSE/MAE, style, total variation, BCE), ``adversarial`` (true-face and
GAN terms) and ``saehd`` (the loss module the trainer calls). Everything is re-exported here.
"""

from __future__ import annotations

from torchsae.losses.adversarial import (
    code_discriminator_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    gan_masked_regularizers,
    true_face_generator_loss,
)
from torchsae.losses.filters import (
    blur_kernel_1d,
    blur_kernel_size,
    blur_out_mask,
    fp32_region,
    gaussian_blur,
    mask_blur_sigma,
    soft_dilate_mask,
    ssim_window_1d,
)
from torchsae.losses.saehd import SAEHDLoss
from torchsae.losses.ssim import dssim, dssim_filter_sizes, saehd_dssim, ssim_per_channel
from torchsae.losses.terms import (
    bce_with_logits_per_sample,
    mae_per_sample,
    mse_per_sample,
    style_loss,
    total_variation_mse,
)

__all__ = [
    "SAEHDLoss",
    "bce_with_logits_per_sample",
    "blur_kernel_1d",
    "blur_kernel_size",
    "blur_out_mask",
    "code_discriminator_loss",
    "dssim",
    "dssim_filter_sizes",
    "fp32_region",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "gan_masked_regularizers",
    "gaussian_blur",
    "mae_per_sample",
    "mask_blur_sigma",
    "mse_per_sample",
    "saehd_dssim",
    "soft_dilate_mask",
    "ssim_per_channel",
    "ssim_window_1d",
    "style_loss",
    "total_variation_mse",
    "true_face_generator_loss",
]
