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
from torchsae.models.registry import build_discriminator, build_model, model_family


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

    Keys: the family's parts (DF ``encoder``, ``inter``, ``decoder_a``, ``decoder_b``; LIAE
    ``encoder``, ``inter_ab``, ``inter_b``, ``decoder``); ``decoder_image_branch`` and
    ``decoder_mask_branch`` (of the family's ``branch_decoder``); ``total`` (the autoencoder);
    ``fp32_bytes`` (total × 4); and with ``include_discriminators`` ``unet_patch_discriminator`` plus,
    for families with one (DF), ``code_discriminator``. Discriminators are not in ``total``: they
    exist only when gan_power / true_face_power are on.
    """
    family = model_family(model_cfg)
    with torch.device("meta"):
        model = build_model(model_cfg)
        counts: dict[str, int] = {part: count_parameters(getattr(model, part)) for part in family.parts}
        if family.branch_decoder is not None:
            image, mask = _decoder_branches(getattr(model, family.branch_decoder))
            counts["decoder_image_branch"] = image
            counts["decoder_mask_branch"] = mask
        counts["total"] = count_parameters(model)
        counts["fp32_bytes"] = counts["total"] * 4
        if include_discriminators:
            if family.code_discriminator:
                counts["code_discriminator"] = count_parameters(build_discriminator("code", model_cfg))
            patch_d = build_discriminator("gan", model_cfg)
            counts["unet_patch_discriminator"] = count_parameters(patch_d)
    return counts
