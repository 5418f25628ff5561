"""pipelines.augment.Augmenter: shapes, ranges, determinism by key, identity, image/mask alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.augment import STREAM_HSV, Augmenter, apply_geometry, generator_for
from pipelines.color import hsv_shift_amounts
from pipelines.colorspace import bgr_to_hsv, bgr_to_lab
from pipelines.cpu_sampler import opencv_geometry
from pipelines.warp import WarpParams
from torchsae.config import DataConfig

R = 64


def _faces(n: int, res: int = R, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random colour fields (uint8) with a soft elliptical face mask and an eyes-mouth blob."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=gen)
    images = torch.nn.functional.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij")
    face = ((xx / 0.7) ** 2 + (yy / 0.85) ** 2 < 1).float()
    em = torch.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) / 0.02)
    masks = torch.stack([face, em / em.max()], 0).expand(n, 2, res, res)
    to_u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    return to_u8(images), to_u8(masks)


@pytest.mark.parametrize("res", [64, 32])
@pytest.mark.parametrize("side", ["a", "b"])
def test_outputs_shapes_dtypes_ranges(res: int, side: str) -> None:
    images, masks = _faces(3, res)
    aug = Augmenter(res, DataConfig(random_hsv_power=0.1, ct_mode="rct"), seed=1)
    out = aug(images, masks, step=0, rank=0, side=side, ct_reference=images)
    assert set(out) == {"warped", "target", "mask", "em"}
    for key, channels in (("warped", 3), ("target", 3), ("mask", 1), ("em", 1)):
        value = out[key]
        assert value.shape == (3, channels, res, res) and value.dtype == torch.float32
        assert value.min() >= 0 and value.max() <= 1
    torch.testing.assert_close(out["em"].amax(dim=(1, 2, 3)), torch.ones(3))


def test_deterministic_by_key_and_independent_of_call_order() -> None:
    images, masks = _faces(4)
    aug = Augmenter(R, DataConfig(random_hsv_power=0.1), seed=5)
    first = aug(images, masks, step=3, rank=1, side="b")
    aug(images, masks, step=9, rank=0, side="a")  # an unrelated call in between changes nothing
    again = Augmenter(R, DataConfig(random_hsv_power=0.1), seed=5)(images, masks, step=3, rank=1, side="b")
    for key in first:
        assert torch.equal(first[key], again[key])
    for other in ({"step": 4, "rank": 1, "side": "b"}, {"step": 3, "rank": 0, "side": "b"}):
        changed = aug(images, masks, **other)
        assert not torch.allclose(first["warped"], changed["warped"])
    other_seed = Augmenter(R, DataConfig(random_hsv_power=0.1), seed=6)(
        images, masks, step=3, rank=1, side="b"
    )
    assert not torch.allclose(first["target"], other_seed["target"])


def test_generator_keys_differ_per_component() -> None:
    draws = {
        key: torch.rand(4, generator=generator_for(*key)).tolist()
        for key in [(0, 0, 0, "a"), (0, 0, 0, "b"), (0, 0, 1, "a"), (0, 1, 0, "a"), (1, 0, 0, "a")]
    }
    assert len({tuple(v) for v in draws.values()}) == len(draws)
    with pytest.raises(ValueError):
        generator_for(0, 0, 0, "c")


def test_call_equals_apply_geometry_with_the_reported_params() -> None:
    images, masks = _faces(4)
    aug = Augmenter(R, DataConfig(), seed=2, sampler="torch")
    out = aug(images, masks, step=7, rank=0, side="a")
    params = aug.params(4, step=7, rank=0, side="a")
    direct = apply_geometry(images.float() / 255, masks.float() / 255, params, warp=True)
    for key in out:
        assert torch.equal(out[key], direct[key])
    # on CPU tensors "auto" resamples with OpenCV, straight from the uint8 batch
    cpu = Augmenter(R, DataConfig(), seed=2)(images, masks, step=7, rank=0, side="a")
    direct = opencv_geometry(images, masks, params, warp=True)
    for key in out:
        assert torch.equal(cpu[key], direct[key])


def test_identity_params_are_the_identity() -> None:
    images, masks = _faces(3)
    image_f, mask_f = images.float() / 255, masks.float() / 255
    out = apply_geometry(image_f, mask_f, WarpParams.identity(3, R), warp=False)
    torch.testing.assert_close(out["target"], image_f, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["warped"], image_f, rtol=0, atol=1e-5)
    # bilinear at exact pixel centres: equal up to float32 rounding of the grid, exact in uint8 levels
    torch.testing.assert_close(out["mask"], mask_f[:, :1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["em"], mask_f[:, 1:], rtol=0, atol=1e-5)
    assert torch.equal((out["mask"] * 255).round().to(torch.uint8), masks[:, :1])
    assert torch.equal((out["em"] * 255).round().to(torch.uint8), masks[:, 1:])


def test_warp_off_gives_warped_equal_to_target() -> None:
    images, masks = _faces(4)
    out = Augmenter(R, DataConfig(random_warp=False), seed=0)(images, masks, step=1, rank=0, side="a")
    assert torch.equal(out["warped"], out["target"])
    assert out["warped"].data_ptr() != out["target"].data_ptr()  # callers may modify one in place
    warped = Augmenter(R, DataConfig(), seed=0)(images, masks, step=1, rank=0, side="a")
    assert torch.equal(warped["target"], out["target"])  # the grid warp only touches `warped`
    assert (warped["warped"] - out["target"]).abs().mean() > 0.005


@pytest.mark.parametrize("sampler", ["torch", "opencv"])
@pytest.mark.parametrize("step", [0, 1, 2])
def test_image_and_mask_stay_aligned(step: int, sampler: str) -> None:
    """Feed the mask itself as the image: the augmented target must reproduce the augmented mask."""
    _, masks = _faces(8)
    blob = masks[:, 1:2].expand(8, 3, R, R).contiguous()
    aug = Augmenter(R, DataConfig(random_flip_a=True), seed=11, sampler=sampler)
    out = aug(blob, masks, step=step, rank=0, side="a")
    # bicubic (image) and bilinear (mask) of the same smooth blob differ only by interpolation
    # (measured max 0.028 with grid_sample; OpenCV's 1/32-pixel positions and uint8 masks add up
    # to 0.003 more: 0.031)
    em_unnormalised = out["em"] * (masks[:, 1:2].float().amax(dim=(2, 3), keepdim=True) / 255)
    assert (out["target"][:, :1] - em_unnormalised).abs().max() < 0.033
    assert aug.params(8, step=step, rank=0, side="a").flip.any() or step != 0


def test_eyes_mouth_mask_renormalised_and_zero_guarded() -> None:
    images, masks = _faces(2)
    masks = masks.clone()
    masks[0, 1] = masks[0, 1] // 4  # peak about 64: rescaled to 1 after warping
    masks[1, 1] = 0  # no eyes-mouth region: stays 0, no NaN
    out = Augmenter(R, DataConfig(), seed=0)(images, masks, step=0, rank=0, side="a")
    assert float(out["em"][0].max()) == pytest.approx(1.0)
    assert torch.equal(out["em"][1], torch.zeros(1, R, R))


def test_flip_defaults_per_side() -> None:
    aug = Augmenter(R, DataConfig(), seed=0)
    flips_a = torch.cat([aug.params(50, step=s, rank=0, side="a").flip for s in range(8)])
    flips_b = torch.cat([aug.params(50, step=s, rank=0, side="b").flip for s in range(8)])
    assert not flips_b.any()  # random_src_flip default False
    assert 0.3 < flips_a.double().mean() < 0.5  # random_dst_flip default True, p = 0.4
    forced = Augmenter(R, DataConfig(random_flip_b=True), seed=0)
    assert forced.params(200, step=0, rank=0, side="b").flip.any()


def test_hsv_and_colour_transfer_only_touch_side_b() -> None:
    images, masks = _faces(4)
    reference = _faces(4, seed=9)[0]
    plain = Augmenter(R, DataConfig(), seed=3)
    coloured = Augmenter(R, DataConfig(random_hsv_power=0.2, ct_mode="rct"), seed=3)
    key = {"step": 2, "rank": 0}
    for name in ("warped", "target", "mask", "em"):  # side A: identical
        a0 = plain(images, masks, side="a", **key)[name]
        a1 = coloured(images, masks, side="a", ct_reference=reference, **key)[name]
        assert torch.equal(a0, a1)
    b0 = plain(images, masks, side="b", **key)
    b1 = coloured(images, masks, side="b", ct_reference=reference, **key)
    assert torch.equal(b0["mask"], b1["mask"]) and torch.equal(b0["em"], b1["em"])  # geometry unchanged
    assert (b0["target"] - b1["target"]).abs().mean() > 0.01  # colour transfer reaches the target


def test_hsv_shift_on_warped_b_by_the_drawn_amount() -> None:
    """With the grid warp off, warped and target share geometry, so their hue differs by the draw."""
    images, masks = _faces(4)
    aug = Augmenter(R, DataConfig(random_warp=False, random_hsv_power=0.2), seed=8)
    out = aug(images, masks, step=5, rank=2, side="b")
    drawn = hsv_shift_amounts(4, 0.2, generator_for(8, 5, 2, "b", STREAM_HSV))
    hsv_w, hsv_t = bgr_to_hsv(out["warped"]), bgr_to_hsv(out["target"])
    for i in range(4):
        usable = (hsv_t[i, 1] > 0.3) & (hsv_t[i, 2] > 0.3) & (hsv_w[i, 1] > 0.3) & (hsv_w[i, 2] < 0.95)
        assert usable.sum() > 100
        moved = torch.remainder(hsv_w[i, 0] - hsv_t[i, 0] + 180, 360) - 180
        assert float(moved[usable].median()) == pytest.approx(float(drawn[i, 0]), abs=1.0)
    off = Augmenter(R, DataConfig(random_warp=False), seed=8)(images, masks, step=5, rank=2, side="b")
    assert torch.equal(off["warped"], off["target"])  # power 0: no shift at all


def test_low_resolution_runs_at_64_and_comes_back() -> None:
    images, masks = _faces(2, 32)
    image_f, mask_f = images.float() / 255, masks.float() / 255
    out = apply_geometry(image_f, mask_f, WarpParams.identity(2, 64), warp=False)
    assert out["target"].shape == (2, 3, 32, 32)
    assert (out["target"] - image_f).abs().max() < 0.02  # bicubic up and down of a smooth image
    with pytest.raises(ValueError, match="do not fit"):
        apply_geometry(image_f, mask_f, WarpParams.identity(2, 32), warp=False)


def test_colour_transfer_moves_b_toward_reference() -> None:
    images, masks = _faces(6)
    tinted = (images.float() * torch.tensor([0.5, 0.8, 1.0]).view(1, 3, 1, 1)).to(torch.uint8)
    reference = _faces(6, seed=4)[0]
    off = Augmenter(R, DataConfig(random_warp=False), seed=0)(tinted, masks, step=0, rank=0, side="b")
    on = Augmenter(R, DataConfig(random_warp=False, ct_mode="rct"), seed=0)(
        tinted, masks, step=0, rank=0, side="b", ct_reference=reference
    )
    ref_mean = bgr_to_lab(reference.float() / 255).mean(dim=(0, 2, 3))

    def distance(x: torch.Tensor) -> float:
        return float((bgr_to_lab(x).mean(dim=(0, 2, 3)) - ref_mean).norm())

    assert distance(on["target"]) < 0.5 * distance(off["target"])


def test_colour_transfer_requires_a_reference() -> None:
    images, masks = _faces(2)
    aug = Augmenter(R, DataConfig(ct_mode="lct"), seed=0)
    with pytest.raises(ValueError, match="ct_reference"):
        aug(images, masks, step=0, rank=0, side="b")
    aug(images, masks, step=0, rank=0, side="a")  # side A never needs one


def test_bad_shapes_are_rejected() -> None:
    images, masks = _faces(2)
    aug = Augmenter(R, DataConfig(), seed=0)
    with pytest.raises(ValueError, match="images"):
        aug(images[:, :2], masks, step=0, rank=0, side="a")
    with pytest.raises(ValueError, match="masks"):
        aug(images, masks[:, :1], step=0, rank=0, side="a")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    images, masks = _faces(4)
    aug = Augmenter(R, DataConfig(random_hsv_power=0.1, ct_mode="rct"), seed=0, sampler="torch")
    cpu = aug(images, masks, step=1, rank=0, side="b", ct_reference=images)
    gpu = aug(images.cuda(), masks.cuda(), step=1, rank=0, side="b", ct_reference=images.cuda())
    for key in cpu:
        assert gpu[key].is_cuda
        np.testing.assert_allclose(gpu[key].cpu().numpy(), cpu[key].numpy(), atol=2e-3)
