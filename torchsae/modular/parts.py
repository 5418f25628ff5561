"""The parts of a modular model: an identity's encoder part, its decoder part, and an adapter.

One implementation of the networks: the parts are DF SAEHD's own submodules, taken from a model
built through the registry (``build_model``), so their layers, initialisation and parameter names are
SAEHD's. An **encoder part** is DF's ``encoder`` + ``inter`` (face (N,3,R,R) BGR [0,1] -> code
(N,C,S,S), the DF latent); a **decoder part** is a DF ``Decoder`` (code -> image (N,3,R,R), mask
(N,1,R,R)); an **adapter** is a residual 3×3 conv block on the code whose last conv starts at zero,
so an untrained adapter is the identity map. LIAE's concatenated code is not a shared latent:
modular modes refuse it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from torchsae.config import ModelConfig
from torchsae.models.layers import Conv2d
from torchsae.models.registry import build_model, model_family
from torchsae.modular.latent import LatentMismatchError, LatentSpec

KINDS = ("encoder", "adapter", "decoder")


def check_df(model_cfg: ModelConfig, what: str = "modular training") -> None:
    """Refuse a non-DF archi in one line (LIAE's code is a concatenation, not a shared latent)."""
    if model_cfg.archi_type != "df":
        raise LatentMismatchError(
            f"{what}: archi {model_cfg.archi!r} has no shared latent (LIAE's code concatenates inter_b and "
            "inter_ab); use a df archi"
        )


def latent_spec(model_cfg: ModelConfig, space: str) -> LatentSpec:
    """The latent a DF model of ``model_cfg`` produces (its inter's code), in ``space``."""
    check_df(model_cfg)
    channels, size = model_family(model_cfg).latent(model_cfg)
    return LatentSpec(space, channels, size, model_cfg.resolution, model_cfg.face_type)


class EncoderPart(nn.Module):
    """DF's ``encoder`` and ``inter``: face -> code. State-dict keys ``encoder.*`` and ``inter.*`` are
    SAEHD's own, so the part drops into a DF SAEHD model unchanged."""

    def __init__(self, encoder: nn.Module, inter: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.inter = inter

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.inter(self.encoder(face))


class Adapter(nn.Module):
    """Code -> code in another space: ``x + conv2(leaky_relu(conv1(x)))`` (3×3 convs, same channels);
    ``conv2`` starts at zero, so an untrained adapter changes nothing."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        self.channels, self.hidden = channels, hidden or channels
        self.conv1 = Conv2d(channels, self.hidden, 3)
        self.conv2 = Conv2d(self.hidden, channels, 3)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return code + self.conv2(nn.functional.leaky_relu(self.conv1(code), 0.1))


def build_parts(model_cfg: ModelConfig) -> tuple[EncoderPart, nn.Module]:
    """A fresh (encoder part, decoder part) of a DF model, initialised as ``build_model`` does."""
    check_df(model_cfg)
    model = build_model(model_cfg)
    return EncoderPart(model.encoder, model.inter), model.decoder_a


def build_part(kind: str, model_cfg: ModelConfig, adapter_hidden: int | None = None) -> nn.Module:
    """A fresh part of ``kind`` (``encoder``, ``adapter``, ``decoder``) for ``model_cfg``."""
    if kind == "adapter":
        return Adapter(latent_spec(model_cfg, "x").channels, adapter_hidden)
    encoder, decoder = build_parts(model_cfg)
    if kind == "encoder":
        return encoder
    if kind == "decoder":
        return decoder
    raise ValueError(f"part kind {kind!r}: must be one of {', '.join(KINDS)}")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with no trainable parameter (teachers, anchors, existing parts)."""
    module = copy.deepcopy(module)
    for p in module.parameters():
        p.requires_grad_(False)
    return module
