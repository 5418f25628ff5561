"""pipelines.colorspace and pipelines.color against OpenCV, scikit-image and numpy references."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.linalg
import skimage.color
import torch

from pipelines.color import (
    _interp,
    apply_hsv_shift,
    color_transfer,
    hsv_shift_amounts,
    idt,
    lct,
    mkl,
    random_rotations,
    rct,
    smooth_like_bilateral,
    sot,
)
from pipelines.colorspace import bgr_to_hsv, bgr_to_lab, hsv_to_bgr, lab_to_bgr

SAMPLES = Path(__file__).parent / "fixtures" / "dfl" / "sampleproc_r128"


def _t(x: np.ndarray) -> torch.Tensor:
    """HWC (or NHWC) numpy → NCHW torch."""
    x = torch.from_numpy(np.ascontiguousarray(x))
    return x.permute(2, 0, 1)[None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy()


def _random_image(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((size, size, 3)).astype(np.float32)
    x[:4] = 0.0
    x[4:8] = 1.0
    x[8:12] = 0.01  # the linear segments of the sRGB gamma and of f(t)
    return x


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """Two real face crops at 64 px: one tinted toward blue (source), one untouched (reference)."""
    a = np.load(SAMPLES / "dfl_wf_01_xseg256_binary.r128.img_bgr.npy")
    b = np.load(SAMPLES / "dfl_f_08_fullface_noxseg.r128.img_bgr.npy")
    a = cv2.resize(a, (64, 64), interpolation=cv2.INTER_AREA)
    b = cv2.resize(b, (64, 64), interpolation=cv2.INTER_AREA)
    tinted = np.clip(b * np.array([1.2, 0.85, 0.6], np.float32) + 0.03, 0, 1).astype(np.float32)
    return tinted, a


# ---------------------------------------------------------------- colour spaces


def test_lab_matches_scikit_image_and_opencv() -> None:
    x = _random_image(0)
    ours = _np(bgr_to_lab(_t(x).double()))
    # scikit-image: the exact CIE formulas (its D65 white differs in the 5th digit)
    np.testing.assert_allclose(ours, skimage.color.rgb2lab(x[..., ::-1].astype(np.float64)), atol=0.01)
    # OpenCV's float path interpolates a 3-D lookup table: within about half a Lab unit
    np.testing.assert_allclose(ours, cv2.cvtColor(x, cv2.COLOR_BGR2Lab), atol=0.6)


def test_lab_to_bgr_matches_opencv_including_out_of_gamut() -> None:
    rng = np.random.default_rng(1)
    lab = np.stack(
        [rng.uniform(0, 100, (40, 40)), rng.uniform(-127, 127, (40, 40)), rng.uniform(-127, 127, (40, 40))],
        -1,
    ).astype(np.float32)
    np.testing.assert_allclose(_np(lab_to_bgr(_t(lab))), cv2.cvtColor(lab, cv2.COLOR_Lab2BGR), atol=1e-3)
    x = _random_image(2)
    np.testing.assert_allclose(_np(lab_to_bgr(bgr_to_lab(_t(x).double()))), x, atol=1e-6)


def test_hsv_matches_opencv_both_ways() -> None:
    x = _random_image(3)
    x[12:14] = x[12:14, :, :1]  # grey pixels: hue 0, saturation 0
    hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
    np.testing.assert_allclose(_np(bgr_to_hsv(_t(x))), hsv, atol=1e-4)
    np.testing.assert_allclose(_np(hsv_to_bgr(_t(hsv))), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), atol=1e-5)


# ---------------------------------------------------------------- HSV shift


def _cv2_hsv_shift(x: np.ndarray, hue: float, sat: float, val: float) -> np.ndarray:
    h, s, v = cv2.split(cv2.cvtColor(x, cv2.COLOR_BGR2HSV))
    h = (h + hue) % 360
    s = np.clip(s + sat, 0, 1)
    v = np.clip(v + val, 0, 1)
    return np.clip(cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2BGR), 0, 1)


def test_hsv_shift_matches_opencv_and_zero_is_identity(faces: tuple[np.ndarray, np.ndarray]) -> None:
    x = faces[1]
    amounts = torch.tensor([[-25.0, 0.08, -0.05], [180.0, -0.2, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    batch = _t(np.stack([x, x, x]))
    out = apply_hsv_shift(batch, amounts)
    for i, (hue, sat, val) in enumerate(amounts.tolist()):
        np.testing.assert_allclose(
            out[i].permute(1, 2, 0).numpy(), _cv2_hsv_shift(x, hue, sat, val), atol=1e-4
        )
    np.testing.assert_allclose(out[2].permute(1, 2, 0).numpy(), x, atol=1e-5)
    hue_moved = (_np(bgr_to_hsv(out[0:1])) - _np(bgr_to_hsv(batch[0:1])))[..., 0] % 360
    saturated = _np(bgr_to_hsv(batch[0:1]))[..., 1] > 0.2
    assert np.median(hue_moved[saturated]) == pytest.approx(335.0, abs=0.01)


def test_hsv_shift_amounts_distribution() -> None:
    power = 0.05  # h = int(360 * 0.05 * 0.5) = 9 degrees
    draws = hsv_shift_amounts(5000, power, torch.Generator().manual_seed(0))
    hue = draws[:, 0]
    assert torch.equal(hue, hue.round()) and hue.min() == -9 and hue.max() == 9
    assert set(hue.long().tolist()) == set(range(-9, 10))
    assert draws[:, 1:].abs().max() <= power / 2 and draws[:, 1:].std() > power / 4
    tiny = hsv_shift_amounts(500, 0.001, torch.Generator().manual_seed(0))[:, 0]
    assert set(tiny.long().tolist()) == {-1, 0, 1}  # at least ±1 degree


# ---------------------------------------------------------------- colour transfer


def _numpy_rct(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    lab, ref_lab = cv2.cvtColor(img, cv2.COLOR_BGR2Lab), cv2.cvtColor(ref, cv2.COLOR_BGR2Lab)
    out = (lab - lab.mean((0, 1))) * (ref_lab.std((0, 1)) / lab.std((0, 1))) + ref_lab.mean((0, 1))
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    out[..., 1:] = np.clip(out[..., 1:], -127, 127)
    return np.clip(cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2BGR), 0, 1)


def _pixels(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 3).astype(np.float64)


def _sqrtm(c: np.ndarray) -> np.ndarray:
    return scipy.linalg.sqrtm(c).real


def _numpy_lct(img: np.ndarray, ref: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    x, r = _pixels(img), _pixels(ref)
    cx, cr = np.cov(x.T, bias=True) + eps * np.eye(3), np.cov(r.T, bias=True) + eps * np.eye(3)
    t = _sqrtm(cr) @ np.linalg.inv(_sqrtm(cx))
    return np.clip((x - x.mean(0)) @ t.T + r.mean(0), 0, 1).reshape(img.shape)


def _numpy_mkl(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    x, r = _pixels(img), _pixels(ref)
    a, b = np.cov(x.T), np.cov(r.T)
    a_half = _sqrtm(a)
    a_inv_half = np.linalg.inv(a_half)
    t = a_inv_half @ _sqrtm(a_half @ b @ a_half) @ a_inv_half
    return np.clip((x - x.mean(0)) @ t + r.mean(0), 0, 1).reshape(img.shape)


def test_rct_equals_opencv_reference(faces: tuple[np.ndarray, np.ndarray]) -> None:
    img, ref = faces
    ours = _np(rct(_t(img), _t(ref)))
    np.testing.assert_allclose(ours, _numpy_rct(img, ref), atol=0.01)


@pytest.mark.parametrize("fn, reference", [(lct, _numpy_lct), (mkl, _numpy_mkl)])
def test_linear_transfers_equal_numpy_reference(fn, reference, faces: tuple[np.ndarray, np.ndarray]) -> None:
    img, ref = faces
    np.testing.assert_allclose(_np(fn(_t(img), _t(ref))), reference(img, ref), atol=1e-5)


@pytest.mark.parametrize("fn", [lct, mkl])
def test_linear_transfers_match_mean_and_covariance(fn) -> None:
    """Without clipping, both map the image's Gaussian statistics onto the reference's exactly."""
    rng = np.random.default_rng(5)
    mix = np.array([[0.08, 0.02, 0.0], [0.02, 0.06, 0.01], [0.0, 0.01, 0.05]])
    img = (0.5 + rng.normal(size=(48 * 48, 3)) @ mix).reshape(48, 48, 3).astype(np.float32)
    ref = (0.45 + rng.normal(size=(48 * 48, 3)) @ (mix[::-1] * 0.8)).reshape(48, 48, 3).astype(np.float32)
    out = _pixels(_np(fn(_t(img), _t(ref))))
    assert out.min() > 0 and out.max() < 1
    np.testing.assert_allclose(out.mean(0), _pixels(ref).mean(0), atol=1e-5)
    np.testing.assert_allclose(np.cov(out.T), np.cov(_pixels(ref).T), atol=2e-5)


def _sliced_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean 1-D Wasserstein distance of the three channels (sorted pixel values)."""
    return float(
        np.mean([np.abs(np.sort(a[..., c].ravel()) - np.sort(b[..., c].ravel())).mean() for c in range(3)])
    )


@pytest.mark.parametrize("mode", ["rct", "lct", "mkl", "idt", "sot"])
def test_every_mode_moves_colour_toward_reference(mode: str, faces: tuple[np.ndarray, np.ndarray]) -> None:
    img, ref = faces
    batch, refs = _t(np.stack([img, ref])), _t(np.stack([ref, img]))  # batched, each against its own
    out = color_transfer(mode, batch, refs, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
    for i, (src, target) in enumerate(((img, ref), (ref, img))):
        before = _sliced_distance(src, target)
        after = _sliced_distance(out[i].permute(1, 2, 0).numpy(), target)
        assert after < 0.6 * before, (mode, i, before, after)


def test_random_transfers_are_reproducible_by_generator(faces: tuple[np.ndarray, np.ndarray]) -> None:
    img, ref = _t(faces[0][::2, ::2]), _t(faces[1][::2, ::2])  # 32 px keeps this quick
    for fn in (idt, sot):
        one = fn(img, ref, torch.Generator().manual_seed(4))
        two = fn(img, ref, torch.Generator().manual_seed(4))
        other = fn(img, ref, torch.Generator().manual_seed(5))
        assert torch.equal(one, two) and not torch.equal(one, other)


def test_unknown_mode_is_rejected() -> None:
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="ct_mode"):
        color_transfer("xyz", x, x, torch.Generator())
    assert color_transfer("none", x, x, torch.Generator()) is x


def test_random_rotations_are_proper_rotations() -> None:
    rot = random_rotations(200, torch.Generator().manual_seed(0))
    eye = torch.eye(3, dtype=torch.float64).expand(200, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(200, dtype=torch.float64))
    assert rot.mean(0).abs().max() < 0.15  # Haar: no preferred direction


def test_interp_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    xp = np.sort(rng.random((2, 3, 20)), -1)
    fp = rng.random((2, 3, 20))
    x = rng.uniform(-0.2, 1.2, (2, 3, 50))
    ours = _interp(torch.from_numpy(x), torch.from_numpy(xp), torch.from_numpy(fp)).numpy()
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(ours[i, j], np.interp(x[i, j], xp[i, j], fp[i, j]), atol=1e-12)


def test_sot_regulariser_matches_opencv_bilateral_filter() -> None:
    rng = np.random.default_rng(1)
    diff = cv2.GaussianBlur(rng.normal(0, 0.05, (64, 64, 3)).astype(np.float32), (0, 0), 2.0)
    expected = cv2.bilateralFilter(diff, 0, 5.0, 16.0)
    np.testing.assert_allclose(_np(smooth_like_bilateral(_t(diff))), expected, atol=1e-4)


def test_sot_requires_equal_sizes() -> None:
    with pytest.raises(ValueError, match="equal-sized"):
        sot(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4), torch.Generator())
