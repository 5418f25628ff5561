"""Parameter counts against DeepFaceLab's own TF counts (tests/fixtures/param_counts.json, spec §7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchsae.config import ModelConfig
from torchsae.models import param_counts
from torchsae.models.discriminators import UNetPatchDiscriminator

FIXTURE = Path(__file__).parent / "fixtures" / "param_counts.json"
ROWS = json.loads(FIXTURE.read_text())
UNET_KEY = "unet_patch_D(gan_power>0, patch=res//8, dims=16)"
CODE_D_KEY = "code_discriminator(true_face_power>0)"


def _cfg(row: dict) -> ModelConfig:
    return ModelConfig(
        archi=row["archi"],
        resolution=row["resolution"],
        ae_dims=row["ae_dims"],
        e_dims=row["e_dims"],
        d_dims=row["d_dims"],
        d_mask_dims=row["d_mask_dims"],
    )


def test_fixture_has_all_18_combinations() -> None:
    combos = {(r["archi"], r["resolution"]) for r in ROWS}
    archis = ("df", "df-ud", "liae", "liae-ud", "df-udt", "liae-udt")
    assert combos == {(a, r) for a in archis for r in (128, 256, 384)}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['archi']}-{r['resolution']}")
def test_counts_match_deepfacelab(row: dict) -> None:
    counts = param_counts(_cfg(row))
    assert counts["encoder"] == row["encoder"]
    assert counts["decoder_image_branch"] == row["decoder_image_branch"]
    assert counts["decoder_mask_branch"] == row["decoder_mask_branch"]
    assert counts["total"] == row["total_autoencoder"]
    assert counts["fp32_bytes"] == 4 * row["total_autoencoder"]
    assert round(counts["fp32_bytes"] / 2**20, 1) == row["fp32_MB_autoencoder"]
    assert counts["unet_patch_discriminator"] == row[UNET_KEY]
    if row["archi"].startswith("df"):
        assert counts["inter"] == row["inter"]
        assert counts["decoder_a"] == row["decoder_dst"]
        assert counts["decoder_b"] == row["decoder_src"]
        assert counts["code_discriminator"] == row[CODE_D_KEY]
        assert counts["total"] == counts["encoder"] + counts["inter"] + 2 * counts["decoder_b"]
    else:
        assert counts["inter_ab"] == row["inter_AB"]
        assert counts["inter_b"] == row["inter_B"]
        assert counts["decoder"] == row["decoder"]
        assert "code_discriminator" not in counts


@pytest.mark.parametrize("row", ROWS[:3], ids=lambda r: str(r["resolution"]))
def test_unet_patch_layers_match_fixture(row: dict) -> None:
    disc = UNetPatchDiscriminator(row["resolution"] // 8, 3, 16)
    assert [list(layer) for layer in disc.layers] == row["unet_patch_D_layers"]


def test_deepfacelive_recommended_liae_udt_224() -> None:
    """The spec's figure for DeepFaceLive's recommended live model: 179,625,901 (about 685 MB)."""
    cfg = ModelConfig(archi="liae-udt", resolution=224, ae_dims=512, e_dims=64, d_dims=64, d_mask_dims=32)
    counts = param_counts(cfg, include_discriminators=False)
    assert counts["total"] == 179_625_901
    assert "unet_patch_discriminator" not in counts


def test_spec_table_plain_df_decoder_split() -> None:
    """Spec §7: one plain-df decoder is 16,815,747 (image) + 2,320,253 (mask) = 19,136,000."""
    counts = param_counts(ModelConfig(archi="df", resolution=128, d_mask_dims=22))
    assert (counts["decoder_image_branch"], counts["decoder_mask_branch"]) == (16_815_747, 2_320_253)
    assert counts["decoder_a"] == 19_136_000


def test_d_mask_dims_default_is_d_dims_third_rounded_even() -> None:
    """Leaving d_mask_dims unset gives 22 for d 64, hence the same counts as the explicit fixture."""
    explicit = param_counts(ModelConfig(archi="liae-ud", resolution=128, d_mask_dims=22))
    assert param_counts(ModelConfig(archi="liae-ud", resolution=128)) == explicit
