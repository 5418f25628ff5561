"""SAEHD wiring and shapes for every archi option combination, at tiny dims (spec §2.2-2.4)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from torchsae.config import ModelConfig
from torchsae.errors import ConfigError
from torchsae.models import SAEHD, CodeDiscriminator, UNetPatchDiscriminator

OPTION_SETS = ["".join(c) for n in range(5) for c in itertools.combinations("udtc", n)]
ARCHIS = [base + (f"-{opts}" if opts else "") for base in ("df", "liae") for opts in OPTION_SETS]


def _tiny(archi: str, resolution: int = 64) -> ModelConfig:
    return ModelConfig(archi=archi, resolution=resolution, ae_dims=8, e_dims=4, d_dims=4, d_mask_dims=4)


# Tolerance between two paths that compute the same outputs with other batching (a and b in one batch or
# apart, swap() versus forward, a sub-network called alone): oneDNN picks its kernels (blocking, vector
# width, threads) per shape and CPU, so the same sums run in another order. Derivation: each layer is a
# float32 dot product of K ≤ 32·5·5 = 800 terms (the widest tiny conv; the dense layers have ≤ 512), whose
# reordering moves it by ≲ √K·eps ≈ 3.4e-6 of the activations' scale (O(1) here; outputs are sigmoids
# in [0, 1]); over ≤ 16 layers that compounds to ≲ 6e-5, so 1e-4 absolute and relative. Measured
# (2026-11, AVX-512, AVX2 and SSE4 kernels, 1-8 threads): ≤ 2.4e-7. A wiring error (wrong decoder, code
# halves swapped or duplicated, a path through the wrong inter) moves outputs by O(0.1), 1000x more.
CLOSE = {"atol": 1e-4, "rtol": 1e-4}

# 48 is a multiple of 16 but not of 32: with t the encoder's ceil sizes must still decode to 48.
CASES = [(archi, 32) for archi in ARCHIS] + [("df-t", 48), ("liae-ut", 48), ("df-uc", 48)]


@pytest.mark.parametrize(("archi", "res"), CASES)
def test_forward_shapes_every_option_combo(archi: str, res: int) -> None:
    torch.manual_seed(0)
    opts = archi.partition("-")[2]
    model = SAEHD(_tiny(archi, res))
    a, b = torch.rand(1, 3, res, res), torch.rand(2, 3, res, res)
    out = model(a, b, swap_from_detached_code=True)
    for key, n, ch in (
        ("pred_aa", 1, 3),
        ("pred_aa_mask", 1, 1),
        ("pred_bb", 2, 3),
        ("pred_bb_mask", 2, 1),
        ("swap_ab", 1, 3),
        ("swap_ab_mask", 1, 1),
        ("swap_ab_ng", 1, 3),
    ):
        assert out[key].shape == (n, ch, res, res), key
        assert 0 <= out[key].min() and out[key].max() <= 1, key
    code_ch = 8 if archi.startswith("df") else 32
    lowest = res // (32 if "d" in opts else 16)
    code_res = lowest if "t" in opts else 2 * lowest
    assert out["code_a"].shape == (1, code_ch, code_res, code_res)
    assert out["code_b"].shape == (2, code_ch, code_res, code_res)
    assert model.code_channels == code_ch and model.code_resolution == code_res
    swapped, swapped_mask, face_mask = model.swap(a)
    torch.testing.assert_close(swapped, out["swap_ab"], **CLOSE)
    torch.testing.assert_close(swapped_mask, out["swap_ab_mask"], **CLOSE)
    torch.testing.assert_close(face_mask, out["pred_aa_mask"], **CLOSE)
    torch.testing.assert_close(out["swap_ab_ng"], out["swap_ab"], **CLOSE)


def test_df_wiring_by_hand() -> None:
    """DF: codes = inter(enc(x)); A recon via decoder_a, B recon and the swap via decoder_b."""
    torch.manual_seed(0)
    model = SAEHD(_tiny("df-ud"))
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model(a, b)
    code_a, code_b = model.inter(model.encoder(a)), model.inter(model.encoder(b))
    torch.testing.assert_close(out["code_a"], code_a, **CLOSE)
    torch.testing.assert_close(out["pred_aa"], model.decoder_a(code_a)[0], **CLOSE)
    torch.testing.assert_close(out["pred_bb_mask"], model.decoder_b(code_b)[1], **CLOSE)
    torch.testing.assert_close(out["swap_ab"], model.decoder_b(code_a)[0], **CLOSE)


def test_liae_code_order_b_first_then_ab() -> None:
    """LIAE: code_a = cat[B(e_a), AB(e_a)], code_b = cat[AB(e_b), AB(e_b)], swap from cat[AB(e_a)]*2."""
    torch.manual_seed(0)
    model = SAEHD(_tiny("liae-ud"))
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model(a, b)
    e_a, e_b = model.encoder(a), model.encoder(b)
    torch.testing.assert_close(
        out["code_a"], torch.cat([model.inter_b(e_a), model.inter_ab(e_a)], 1), **CLOSE
    )
    torch.testing.assert_close(out["code_b"], torch.cat([model.inter_ab(e_b)] * 2, 1), **CLOSE)
    swap_code = torch.cat([model.inter_ab(e_a)] * 2, 1)
    torch.testing.assert_close(out["swap_ab"], model.decoder(swap_code)[0], **CLOSE)
    torch.testing.assert_close(out["pred_aa_mask"], model.decoder(out["code_a"])[1], **CLOSE)


@pytest.mark.parametrize("archi", ["df", "liae"])
def test_swap_from_detached_code_trains_only_the_b_decoder(archi: str) -> None:
    torch.manual_seed(0)
    model = SAEHD(_tiny(archi))
    out = model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), swap_from_detached_code=True)
    out["swap_ab_ng"].sum().backward()
    decoder = model.decoder_b if archi == "df" else model.decoder
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())


def test_liae_freezes_inter_ab_without_random_warp() -> None:
    liae = SAEHD(_tiny("liae"))
    frozen = {id(p) for p in liae.inter_ab.parameters()}
    without = {id(p) for p in liae.trainable_parameters(random_warp=False)}
    assert without == {id(p) for p in liae.parameters()} - frozen
    assert len(liae.trainable_parameters(random_warp=True)) == len(list(liae.parameters()))
    df = SAEHD(_tiny("df"))
    assert len(df.trainable_parameters(random_warp=False)) == len(list(df.parameters()))


def test_cosine_option_changes_the_function() -> None:
    torch.manual_seed(0)
    plain = SAEHD(_tiny("df"))
    cos = SAEHD(_tiny("df-c"))
    cos.load_state_dict(plain.state_dict())  # c adds no parameters
    a = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(plain.swap(a)[0], cos.swap(a)[0])


@pytest.mark.parametrize(
    ("archi", "resolution", "hint"),
    [("df", 100, "96 and 112"), ("liae-ud", 80, "64 and 96"), ("df-d", 16, "32"), ("df-t", 8, "16")],
)
def test_resolution_validation(archi: str, resolution: int, hint: str) -> None:
    with pytest.raises(ConfigError, match=f"resolution {resolution}.*{hint}"):
        SAEHD(_tiny(archi, resolution))


def test_bad_archi_rejected() -> None:
    with pytest.raises(ConfigError, match="archi"):
        SAEHD(_tiny("df-x"))


def test_state_dict_names_mirror_deepfacelab() -> None:
    keys = set(SAEHD(_tiny("df-udt")).state_dict())
    for key in (
        "encoder.down1.conv1.weight",
        "encoder.res1.conv2.bias",
        "encoder.res5.conv1.weight",
        "inter.dense1.weight",
        "decoder_a.upscale3.conv1.weight",
        "decoder_b.out_conv3.weight",
        "decoder_b.upscalem4.conv1.weight",
        "decoder_b.out_convm.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("inter.upscale1") for k in keys)  # no inter upscale with t
    liae = set(SAEHD(_tiny("liae")).state_dict())
    assert {
        "encoder.down1.downs.3.conv1.weight",
        "inter_ab.upscale1.conv1.weight",
        "decoder.res2.conv1.bias",
    } <= liae


def test_code_discriminator_by_hand() -> None:
    """n = 1 + code_res // 8 stride-2 convs (4×4 then 3×3, symmetric k//2 padding), lrelu 0.1, 1×1 out."""
    torch.manual_seed(0)
    disc = CodeDiscriminator(16, 16, ch=8)
    assert [c.out_channels for c in disc.convs] == [8, 16, 32]
    assert [c.kernel_size for c in disc.convs] == [(4, 4), (3, 3), (3, 3)]
    code = torch.randn(2, 16, 16, 16)
    x = code
    for conv in disc.convs:
        k = conv.kernel_size[0]
        x = F.leaky_relu(F.conv2d(F.pad(x, [k // 2] * 4), conv.weight, conv.bias, stride=2), 0.1)
    expected = F.conv2d(x, disc.out_conv.weight, disc.out_conv.bias)
    torch.testing.assert_close(disc(code), expected)
    assert expected.shape == (2, 1, 3, 3)
    assert len(CodeDiscriminator(16, 4, ch=8).convs) == 1


@pytest.mark.parametrize(("patch", "res", "center"), [(16, 32, 4), (48, 48, 3)])
def test_unet_patch_discriminator_shapes(patch: int, res: int, center: int) -> None:
    disc = UNetPatchDiscriminator(patch, 3, base_ch=4)
    center_logits, full_logits = disc(torch.randn(2, 3, res, res))
    assert center_logits.shape == (2, 1, center, center)
    assert full_logits.shape == (2, 1, res, res)
    assert [c.out_channels for c in disc.convs] == [
        min(4 * 2**i, 512) for i in range(1, len(disc.layers) + 1)
    ]
