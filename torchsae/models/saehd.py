"""SAEHD: the autoencoder that ``ModelConfig`` describes, with the training and swap forwards (spec §2.4).

Vocabulary: A is DeepFaceLab's *dst* (the faces to replace), B is *src* (the identity rendered in).
DF: ``decoder_a`` = DeepFaceLab's ``decoder_dst``, ``decoder_b`` = ``decoder_src``; the swap is
``decoder_b(inter(enc(face_a)))``. LIAE: one ``decoder``; codes are ``cat[inter_b(e), inter_ab(e)]``
(B first, then AB) for A and ``cat[inter_ab(e), inter_ab(e)]`` for B and for the swap.

Inputs and outputs are NCHW, images BGR in [0, 1], masks (N, 1, R, R) in [0, 1].
"""

from __future__ import annotations

import torch

from torchsae.config import ModelConfig
from torchsae.models.archi import Decoder, Encoder, Inter
from torchsae.models.base import FamilyModel
from torchsae.models.layers import glorot_init_


class SAEHD(FamilyModel):
    """DF or LIAE autoencoder; submodule names are those of ``docs/INTERFACES.md``.

    Built through ``torchsae.models.registry.build_model``; the families ``df`` and ``liae`` are
    declared in ``torchsae.models.saehd_families`` (latent, frozen and re-initialised parts, files).

    Encoder and inter run once on A and B concatenated along the batch (the nets have no batch
    statistics, so this equals running them separately and saves kernel launches); decoders likewise
    run once per decoder on every code they must decode.
    """

    def __init__(self, model_cfg: ModelConfig) -> None:
        super().__init__(model_cfg)
        self.archi_type = model_cfg.archi_type
        t, cos = model_cfg.has("t"), model_cfg.has("c")
        ae = model_cfg.ae_dims
        e, d, dm = model_cfg.resolved_e_dims, model_cfg.resolved_d_dims, model_cfg.resolved_d_mask_dims
        lowest = model_cfg.lowest_dense_res

        self.encoder = Encoder(3, e, t=t, u=model_cfg.has("u"), cosine=cos)
        flat = self.encoder.flat_dim(model_cfg.resolution)
        if self.archi_type == "df":
            self.inter = Inter(flat, ae, ae, lowest, t=t, cosine=cos)
            self.decoder_a = Decoder(ae, d, dm, d=model_cfg.has("d"), t=t, cosine=cos)
            self.decoder_b = Decoder(ae, d, dm, d=model_cfg.has("d"), t=t, cosine=cos)
        else:
            self.inter_ab = Inter(flat, ae, ae * 2, lowest, t=t, cosine=cos)
            self.inter_b = Inter(flat, ae, ae * 2, lowest, t=t, cosine=cos)
            self.decoder = Decoder(ae * 4, d, dm, d=model_cfg.has("d"), t=t, cosine=cos)
        glorot_init_(self)

    def forward(
        self, warped_a: torch.Tensor, warped_b: torch.Tensor, swap_from_detached_code: bool = False
    ) -> dict[str, torch.Tensor]:
        """The training forward pass.

        Returns ``pred_aa, pred_aa_mask, pred_bb, pred_bb_mask, swap_ab, swap_ab_mask, code_a, code_b``
        and, with ``swap_from_detached_code``, ``swap_ab_ng``: the swap decoded from a code cut off
        from the graph, which the face-style loss uses so it trains the B decoder only.
        """
        n_a = warped_a.shape[0]
        if self.archi_type == "df":
            code = self.inter(self.encoder(torch.cat([warped_a, warped_b], dim=0)))
            code_a, code_b = code[:n_a], code[n_a:]
            pred_aa, pred_aa_mask = self.decoder_a(code_a)
            pred_b, pred_b_mask = self.decoder_b(code)  # [swap_ab; pred_bb]
            swap_ab, pred_bb = pred_b[:n_a], pred_b[n_a:]
            swap_ab_mask, pred_bb_mask = pred_b_mask[:n_a], pred_b_mask[n_a:]
            swap_code = code_a
            decode_b = self.decoder_b.forward_image
        else:
            flat = self.encoder(torch.cat([warped_a, warped_b], dim=0))
            ab = self.inter_ab(flat)
            ab_a, ab_b = ab[:n_a], ab[n_a:]
            code_a = torch.cat([self.inter_b(flat[:n_a]), ab_a], dim=1)
            code_b = torch.cat([ab_b, ab_b], dim=1)
            swap_code = torch.cat([ab_a, ab_a], dim=1)
            images, masks = self.decoder(torch.cat([code_a, code_b, swap_code], dim=0))
            pred_aa, pred_bb, swap_ab = images.split([n_a, images.shape[0] - 2 * n_a, n_a])
            pred_aa_mask, pred_bb_mask, swap_ab_mask = masks.split([n_a, masks.shape[0] - 2 * n_a, n_a])
            decode_b = self.decoder.forward_image
        out = {
            "pred_aa": pred_aa,
            "pred_aa_mask": pred_aa_mask,
            "pred_bb": pred_bb,
            "pred_bb_mask": pred_bb_mask,
            "swap_ab": swap_ab,
            "swap_ab_mask": swap_ab_mask,
            "code_a": code_a,
            "code_b": code_b,
        }
        if swap_from_detached_code:
            out["swap_ab_ng"] = decode_b(swap_code.detach())
        return out

    def swap(self, face_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Face A in -> (swapped face, swap mask, A's own face mask), as DeepFaceLab's merger and .dfm.

        DF: ``decoder_b`` on A's code gives the swap and its mask; ``decoder_a``'s mask head gives the
        face mask. LIAE: the decoder on ``cat[AB, AB]`` gives the swap, on ``cat[B, AB]`` the face mask.
        """
        flat = self.encoder(face_a)
        if self.archi_type == "df":
            code = self.inter(flat)
            swapped, swapped_mask = self.decoder_b(code)
            return swapped, swapped_mask, self.decoder_a.forward_mask(code)
        ab = self.inter_ab(flat)
        swapped, swapped_mask = self.decoder(torch.cat([ab, ab], dim=1))
        face_mask = self.decoder.forward_mask(torch.cat([self.inter_b(flat), ab], dim=1))
        return swapped, swapped_mask, face_mask
