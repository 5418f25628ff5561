"""Parameter counts of a SAEHD configuration, computed without allocating its weights.

The networks are built on PyTorch's ``meta`` device: shapes only, no memory, so even ``liae`` at 384
(364M parameters) counts instantly. The numbers equal DeepFaceLab's trainable-variable counts
(spec §7) because the modules are the same layer for layer.
"""

from __future__ import annotations

import torch
from torch import nn

from torchsae.config import ModelConfig
from torchsae.models.archi import Decoder
from torchsae.models.discriminators import CodeDiscriminator, UNetPatchDiscriminator
from torchsae.models.saehd import SAEHD


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters in ``module``."""
    return sum(p.numel() for p in module.parameters())


def _decoder_branches(decoder: Decoder) -> tuple[int, int]:
    """(image branch, mask branch) parameter counts; the mask branch is ``upscalem*`` and ``out_convm``."""
    mask = sum(
        p.numel()
        for name, p in decoder.named_parameters()
        if name.startswith("upscalem") or name.startswith("out_convm")
    )
    return count_parameters(decoder) - mask, mask


def param_counts(model_cfg: ModelConfig, include_discriminators: bool = True) -> dict[str, int]:
    """Per-network parameter counts of the autoencoder ``model_cfg`` describes.

    Keys: ``encoder``; DF ``inter``, ``decoder_a``, ``decoder_b``; LIAE ``inter_ab``, ``inter_b``,
    ``decoder``; ``decoder_image_branch`` and ``decoder_mask_branch`` (of one decoder); ``total``
    (the autoencoder); ``fp32_bytes`` (total × 4); and with ``include_discriminators``
    ``unet_patch_discriminator`` plus, for DF, ``code_discriminator``. Discriminators are not in
    ``total``: they exist only when gan_power / true_face_power are on.
    """
    with torch.device("meta"):
        model = SAEHD(model_cfg)
        counts: dict[str, int] = {"encoder": count_parameters(model.encoder)}
        if model.archi_type == "df":
            counts["inter"] = count_parameters(model.inter)
            counts["decoder_a"] = count_parameters(model.decoder_a)
            counts["decoder_b"] = count_parameters(model.decoder_b)
            image, mask = _decoder_branches(model.decoder_b)
        else:
            counts["inter_ab"] = count_parameters(model.inter_ab)
            counts["inter_b"] = count_parameters(model.inter_b)
            counts["decoder"] = count_parameters(model.decoder)
            image, mask = _decoder_branches(model.decoder)
        counts["decoder_image_branch"] = image
        counts["decoder_mask_branch"] = mask
        counts["total"] = count_parameters(model)
        counts["fp32_bytes"] = counts["total"] * 4
        if include_discriminators:
            if model.archi_type == "df":
                code_d = CodeDiscriminator(model.code_channels, model.code_resolution)
                counts["code_discriminator"] = count_parameters(code_d)
            patch_d = UNetPatchDiscriminator(model_cfg.resolved_gan_patch_size, 3, model_cfg.gan_dims)
            counts["unet_patch_discriminator"] = count_parameters(patch_d)
    return counts
