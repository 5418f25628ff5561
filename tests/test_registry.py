"""The model registry: the SAEHD families' declarations match their networks, and a new family added by
writing one module (here: this file's ``TinyAE`` and its ``ModelFamily``) and registering it builds,
counts its parameters, trains through the generic code path and pretrains like the built-in ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchsae.cli.info import format_table, model_info
from torchsae.config import Config, ModelConfig
from torchsae.errors import ConfigError
from torchsae.models import SAEHD
from torchsae.models.base import FamilyModel
from torchsae.models.counts import param_counts
from torchsae.models.registry import (
    ModelFamily,
    build_model,
    family_names,
    model_family,
    register,
    unregister,
)
from torchsae.train.pretrain import inter_names
from torchsae.train.step import build_parts, g_step, synthetic_batch

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- a whole new model family: one nn.Module and one declaration ----


class TinyAE(FamilyModel):
    """A DF-shaped toy: one strided conv encodes to (ae_dims, R/16, R/16), one transposed conv per side
    decodes to BGR + mask."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        super().__init__(model_cfg)
        ae = model_cfg.ae_dims
        self.encoder = nn.Conv2d(3, ae, 16, stride=16)
        self.decoder_a = nn.ConvTranspose2d(ae, 4, 16, stride=16)
        self.decoder_b = nn.ConvTranspose2d(ae, 4, 16, stride=16)

    @staticmethod
    def _decode(decoder: nn.Module, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.sigmoid(decoder(code))
        return out[:, :3], out[:, 3:]

    def forward(self, warped_a, warped_b, swap_from_detached_code: bool = False):
        n = warped_a.shape[0]
        code = self.encoder(torch.cat([warped_a, warped_b]))
        code_a, code_b = code[:n], code[n:]
        pred_aa, pred_aa_mask = self._decode(self.decoder_a, code_a)
        pred_bb, pred_bb_mask = self._decode(self.decoder_b, code_b)
        swap_ab, swap_ab_mask = self._decode(self.decoder_b, code_a)
        out = dict(
            pred_aa=pred_aa,
            pred_aa_mask=pred_aa_mask,
            pred_bb=pred_bb,
            pred_bb_mask=pred_bb_mask,
            swap_ab=swap_ab,
            swap_ab_mask=swap_ab_mask,
            code_a=code_a,
            code_b=code_b,
        )
        if swap_from_detached_code:
            out["swap_ab_ng"] = self._decode(self.decoder_b, code_a.detach())[0]
        return out

    def swap(self, face_a):
        code = self.encoder(face_a)
        swapped, swapped_mask = self._decode(self.decoder_b, code)
        return swapped, swapped_mask, self._decode(self.decoder_a, code)[1]


TINY = ModelFamily(
    name="tiny",
    model=TinyAE,
    parts=("encoder", "decoder_a", "decoder_b"),
    latent=lambda cfg: (cfg.ae_dims, cfg.resolution // 16),
    pretrain_reinit=("encoder",),
    frozen_without_random_warp=("decoder_a",),
    part_labels={"encoder": "encoder (one conv)"},
    code_discriminator=True,
)


@pytest.fixture
def tiny_family():
    register(TINY)
    try:
        yield TINY
    finally:
        unregister(TINY.name)


def tiny_config(**loss: float) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(archi="tiny", resolution=64, ae_dims=8)
    cfg.data.backend = "synthetic"
    for key, value in loss.items():
        setattr(cfg.loss, key, value)
    return cfg.validate()


def test_a_registered_family_is_a_valid_archi_and_builds(tiny_family) -> None:
    assert "tiny" in family_names()
    cfg = tiny_config()
    model = build_model(cfg.model)
    assert isinstance(model, TinyAE) and model_family(cfg.model) is TINY
    assert (model.code_channels, model.code_resolution) == (8, 4)
    out = model(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    assert out["code_a"].shape == (2, 8, 4, 4)  # the declared latent
    unregister("tiny")
    with pytest.raises(ConfigError, match="archi 'tiny': type must be one of df, liae"):
        ModelConfig(archi="tiny").validate()


def test_a_registered_family_counts_its_parameters(tiny_family) -> None:
    cfg = tiny_config()
    counts = param_counts(cfg.model)
    model = build_model(cfg.model)
    assert counts["encoder"] == 3 * 8 * 16 * 16 + 8
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(counts[part] for part in TINY.parts)
    assert "code_discriminator" in counts and "decoder_image_branch" not in counts
    table = format_table(model_info(cfg.model))
    assert "encoder (one conv)" in table and "decoder_b" in table


def test_a_registered_family_trains_through_the_generic_step(tiny_family) -> None:
    cfg = tiny_config(true_face_power=0.1)
    torch.manual_seed(0)
    parts = build_parts(cfg, "cpu")
    assert set(parts.discriminators) == {"code"}  # built from the declared latent
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    loss = g_step(parts, [synthetic_batch(2, 64, "cpu")])
    assert torch.isfinite(loss)
    after = parts.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    # random_warp off freezes the declared part
    cfg.data.random_warp = False
    frozen = {id(p) for p in parts.model.decoder_a.parameters()}
    assert frozen.isdisjoint(id(p) for p in parts.model.trainable_parameters(False))
    assert inter_names(parts.model) == ("encoder",)


def test_a_registered_family_trains_with_the_trainer(tiny_family, tmp_path: Path) -> None:
    from torchsae.train.trainer import train

    cfg = tiny_config()
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.run_dir = 2, 2, str(tmp_path)
    cfg.train.device = "cpu"
    result = train(cfg)
    assert result.step == 2 and result.checkpoint is not None and result.checkpoint.is_file()


@pytest.mark.parametrize("archi", ["df-ud", "df-udt", "liae-ud", "liae-udtc"])
def test_saehd_declarations_match_the_networks(archi: str) -> None:
    cfg = ModelConfig(archi=archi, resolution=64, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4)
    family = model_family(cfg)
    model = build_model(cfg)
    assert isinstance(model, SAEHD)
    assert tuple(name for name, _ in model.named_children()) == family.parts
    out = model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    channels, size = family.latent(cfg)
    assert out["code_a"].shape[1:] == out["code_b"].shape[1:] == (channels, size, size)
    assert {part for _, part in family.dfl_files} == set(family.parts)
    assert set(family.pretrain_reinit) <= set(family.parts)
