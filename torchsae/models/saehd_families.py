"""DeepFaceLab's two SAEHD families, ``df`` and ``liae``, as registry declarations (spec §2.4).

Both are built by ``torchsae.models.saehd.SAEHD`` (named by string: this module imports no torch).
A is DeepFaceLab's dst, B its src: DF's ``decoder_a`` is DeepFaceLab's ``decoder_dst``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from torchsae.models.registry import ModelFamily, register

if TYPE_CHECKING:
    from torchsae.config import ModelConfig


def _code_size(model_cfg: ModelConfig) -> int:
    """Spatial size of the codes: 2L (the inter's Upscale), or L with option ``t`` (no Upscale)."""
    lowest = model_cfg.lowest_dense_res
    return lowest if model_cfg.has("t") else 2 * lowest


DF = register(
    ModelFamily(
        name="df",
        model="torchsae.models.saehd:SAEHD",
        parts=("encoder", "inter", "decoder_a", "decoder_b"),
        latent=lambda cfg: (cfg.ae_dims, _code_size(cfg)),
        pretrain_reinit=("inter",),
        dfl_files=(
            ("encoder", "encoder"),
            ("inter", "inter"),
            ("decoder_src", "decoder_b"),
            ("decoder_dst", "decoder_a"),
        ),
        part_labels=MappingProxyType(
            {"decoder_a": "decoder_a (DFL decoder_dst)", "decoder_b": "decoder_b (DFL decoder_src)"}
        ),
        branch_decoder="decoder_b",
        code_discriminator=True,
    )
)

# LIAE: codes are cat[inter_b, inter_ab] (2·ae_dims each), so the decoder consumes 4·ae_dims channels
LIAE = register(
    ModelFamily(
        name="liae",
        model="torchsae.models.saehd:SAEHD",
        parts=("encoder", "inter_ab", "inter_b", "decoder"),
        latent=lambda cfg: (cfg.ae_dims * 4, _code_size(cfg)),
        pretrain_reinit=("inter_ab", "inter_b"),
        # DeepFaceLab freezes inter_ab when random_warp is off: once the shared AB space has been
        # learnt from warped faces, fine-tuning on unwarped ones trains only encoder, inter_b and
        # decoder, so the identity-shared code is not pulled towards either side
        frozen_without_random_warp=("inter_ab",),
        dfl_files=(
            ("encoder", "encoder"),
            ("inter_AB", "inter_ab"),
            ("inter_B", "inter_b"),
            ("decoder", "decoder"),
        ),
        branch_decoder="decoder",
    )
)
