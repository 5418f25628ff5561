"""The adversarial parts of SAEHD's loss (spec §3): true-face code discriminator and the patch GAN.

These take discriminator *logits*, not discriminators, so the discriminators can run under the
trainer's autocast while the loss maths stays fp32. All return per-sample vectors (shape (N,)).

Vocabulary: A = DeepFaceLab's dst, B = src. DFL's ``code_s`` (src) is our ``code_b``; ``code_d``
(dst) is ``code_a``; the GAN discriminator ``D_src`` judges the src reconstruction ``pred_bb``.

Gradient hygiene (the trainer's job): in the G step the discriminators' parameters also receive
gradients through these terms; only the G optimiser steps, and the D optimisers zero their grads
before their own step. In the D steps pass detached codes / images so G receives nothing.
"""

from __future__ import annotations

import torch

from torchsae.losses.filters import fp32_region
from torchsae.losses.terms import bce_with_logits_per_sample, mse_per_sample, total_variation_mse

# Weights DeepFaceLab hard-codes for the masked-training regularisers of the GAN term.
GAN_TV_WEIGHT = 1e-6
GAN_BACKGROUND_WEIGHT = 0.02


def true_face_generator_loss(logits_code_b: torch.Tensor, power: float) -> torch.Tensor:
    """G term ``tfp·BCE(1, D(code_b))``: make src codes look like dst codes to the code discriminator."""
    with fp32_region(logits_code_b.device):
        return power * bce_with_logits_per_sample(logits_code_b, 1.0)


def code_discriminator_loss(logits_code_a: torch.Tensor, logits_code_b: torch.Tensor) -> torch.Tensor:
    """Code-D loss ``½[BCE(1, D(code_a)) + BCE(0, D(code_b))]``: dst codes are "real", src "fake"."""
    with fp32_region(logits_code_a.device):
        real = bce_with_logits_per_sample(logits_code_a, 1.0)
        fake = bce_with_logits_per_sample(logits_code_b, 0.0)
        return 0.5 * (real + fake)


def gan_generator_loss(fake_center: torch.Tensor, fake_full: torch.Tensor, power: float) -> torch.Tensor:
    """G term ``gp·[BCE(1, fake_c) + BCE(1, fake_x)]`` on the U-Net discriminator's two logit maps."""
    with fp32_region(fake_center.device):
        return power * (
            bce_with_logits_per_sample(fake_center, 1.0) + bce_with_logits_per_sample(fake_full, 1.0)
        )


def gan_discriminator_loss(
    real_center: torch.Tensor,
    real_full: torch.Tensor,
    fake_center: torch.Tensor,
    fake_full: torch.Tensor,
) -> torch.Tensor:
    """GAN-D loss ``½[BCE(1,real_c)+BCE(0,fake_c)] + ½[BCE(1,real_x)+BCE(0,fake_x)]``."""
    with fp32_region(real_center.device):
        center = bce_with_logits_per_sample(real_center, 1.0) + bce_with_logits_per_sample(fake_center, 0.0)
        full = bce_with_logits_per_sample(real_full, 1.0) + bce_with_logits_per_sample(fake_full, 0.0)
        return 0.5 * center + 0.5 * full


def gan_masked_regularizers(
    pred_bb: torch.Tensor, target_b: torch.Tensor, mask_b_blur: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two extra G terms DFL adds with the GAN when masked_training is on.

    Returns ``(1e-6·TV_mse(pred_bb), 0.02·mean((pred_bb·anti - target_b·anti)²))`` with
    ``anti = 1 - mask_b_blur``: with the face-masked GAN input the background of the src
    reconstruction is otherwise unconstrained, so DFL keeps it smooth and close to the target.
    """
    with fp32_region(pred_bb.device):
        pred = pred_bb.float()
        anti = 1.0 - mask_b_blur.float()
        tv = GAN_TV_WEIGHT * total_variation_mse(pred)
        background = GAN_BACKGROUND_WEIGHT * mse_per_sample(pred * anti, target_b.float() * anti)
        return tv, background
