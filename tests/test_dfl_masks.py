"""Landmark hull and eyes-mouth masks, and the per-file masks at training resolution.

Reference: ``tests/fixtures/dfl/sampleproc_r128`` holds what DeepFaceLab's own ``SampleProcessor``
returned at res 128 for each fixture (FULL_FACE and EYES_MOUTH). Measured: our masks match all of them
bit for bit where OpenCV runs its AVX2/AVX-512 kernels, and within 1 ulp (1.2e-7) on ~1.5 % of the
eyes-mouth pixels where it runs SSE4 ones; the tolerance, derived in helpers_dfl_reference.MASK_ATOL,
is a few ulps (4e-6), far below any real error (≥ 1e-2). The hull-mask fixture ``dfl_wf_02`` stores DeepFaceLab's ``get_image_hull_mask`` at 256 px, also matched
exactly. Properties without a fixture are checked against hand-written geometry.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers_dfl_reference import MASK_ATOL, assert_mask_close

from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.geometry import face_transform_mat, transform_points
from torchsae.dfl.masks import eyes_mouth_mask, face_masks_at, hull_mask
from torchsae.dfl.meta import DFLMeta, load_meta


def full_face_mask_at(*args, **kwargs) -> np.ndarray:
    """The FULL_FACE mask of :func:`face_masks_at`."""
    return face_masks_at(*args, **kwargs)[0]


def eyes_mouth_mask_at(*args, **kwargs) -> np.ndarray:
    """The EYES_MOUTH mask of :func:`face_masks_at`."""
    return face_masks_at(*args, **kwargs)[1]


FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
SAMPLEPROC = FIXTURES / "sampleproc_r128"
ENTRIES = json.loads((SAMPLEPROC / "manifest.json").read_text())["files"]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["file"])
def test_masks_match_deepfacelab_sample_processor(entry: dict) -> None:
    meta = load_meta(FIXTURES / entry["file"])
    full, em = face_masks_at(meta, meta.image_hw, 128, "xseg", entry["file"])
    ref_full = np.load(SAMPLEPROC / entry["full_face_mask"]["npy"])
    ref_em = np.load(SAMPLEPROC / entry["eyes_mouth_mask"]["npy"])
    assert full.shape == ref_full.shape == (128, 128, 1) and full.dtype == np.float32
    assert em.shape == ref_em.shape and em.dtype == np.float32
    assert_mask_close(full, ref_full, "full")
    assert_mask_close(em, ref_em, "eyes-mouth")
    # the single-mask entry points compute the same thing (same machine, same kernels: exact)
    np.testing.assert_array_equal(full_face_mask_at(meta, meta.image_hw, 128), full)
    np.testing.assert_array_equal(eyes_mouth_mask_at(meta, meta.image_hw, 128), em)
    assert float(em.mean()) == pytest.approx(entry["eyes_mouth_mask"]["mean"], abs=MASK_ATOL)


def test_hull_mask_matches_deepfacelab_hull_at_256() -> None:
    """dfl_wf_02 stores DeepFaceLab's get_image_hull_mask at 256 px (landmarks scaled by 1/2)."""
    meta = load_meta(FIXTURES / "dfl_wf_02_flip_xseg256_hull.jpg")
    mask = hull_mask(meta.landmarks * 0.5, (256, 256))
    assert mask.shape == (256, 256, 1) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, meta.xseg_mask())


def _points_inside(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    return mask[points[:, 1].astype(int), points[:, 0].astype(int), 0] > 0


def test_hull_geometry_and_eyebrow_push() -> None:
    """The hull covers the jaw, brow and nose landmarks; pushing the brows grows it upwards only."""
    meta = load_meta(FIXTURES / "dfl_f_08_fullface_noxseg.jpg")
    lm = meta.landmarks
    plain = hull_mask(lm, (512, 512), eyebrows_expand_mod=0.0)
    pushed = hull_mask(lm, (512, 512), eyebrows_expand_mod=1.0)
    assert set(np.unique(plain)) == {0.0, 1.0}
    assert _points_inside(plain, lm[0:36]).all() and _points_inside(plain, lm[48:60]).all()
    assert (pushed >= plain).all() and pushed.sum() > plain.sum()
    grown_rows = np.nonzero((pushed > plain).any(axis=(1, 2)))[0]
    assert grown_rows.max() <= max(lm[0, 1], lm[16, 1])  # only above the jaw line's upper ends
    # With mod 1 the middle of a brow moves up by half its distance to the eye lid below it (by hand).
    brow, lid = lm[19], lm[37]
    lifted = brow + 0.5 * (brow - lid)
    assert pushed[int(lifted[1]) + 2, int(lifted[0]), 0] == 1.0
    assert plain[int(lifted[1]) + 2, int(lifted[0]), 0] == 0.0


def test_eyes_mouth_mask_by_hand() -> None:
    """Hand-built landmarks: a square eye and mouth; dilation h//32 and an odd blur of h//16 + 1."""
    lm = np.zeros((68, 2), np.float32)
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [0, 5], [10, 5]], np.float32)
    lm[36:42] = square + (20, 20)
    lm[42:48] = square + (60, 20)
    lm[60:68] = np.concatenate([square, square[:2]]) + (40, 80)
    h = 128
    got = eyes_mouth_mask(lm, (h, h))
    parts = []
    for groups in (((36, 42), (42, 48)), ((60, 68),)):
        part = np.zeros((h, h), np.float32)
        for a, b in groups:
            x0, y0 = lm[a:b].min(0).astype(int)
            x1, y1 = lm[a:b].max(0).astype(int)
            part[y0 : y1 + 1, x0 : x1 + 1] = 1.0
        part = cv2.dilate(part, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4, 4)))
        parts.append(cv2.GaussianBlur(part, (9, 9), 0))
    np.testing.assert_allclose(got[..., 0], np.clip(parts[0] + parts[1], 0, 1), atol=1e-6)
    assert got.shape == (h, h, 1)


def test_mask_policies() -> None:
    with_xseg = load_meta(FIXTURES / "dfl_wf_01_xseg256_binary.jpg")
    without = load_meta(FIXTURES / "dfl_wf_07_noxseg_iepolys.jpg")
    hw = (512, 512)
    hull_at_128 = cv2.resize(hull_mask(with_xseg.landmarks, hw), (128, 128), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(full_face_mask_at(with_xseg, hw, 128, "hull")[..., 0], hull_at_128)
    assert not np.array_equal(full_face_mask_at(with_xseg, hw, 128, "xseg")[..., 0], hull_at_128)
    np.testing.assert_array_equal(
        full_face_mask_at(without, hw, 64, "full"), np.ones((64, 64, 1), np.float32)
    )
    np.testing.assert_array_equal(
        full_face_mask_at(without, hw, 128, "xseg"), full_face_mask_at(without, hw, 128, "hull")
    )
    np.testing.assert_array_equal(
        full_face_mask_at(with_xseg, hw, 128, "require"), full_face_mask_at(with_xseg, hw, 128, "xseg")
    )
    with pytest.raises(DFLFormatError, match="07.jpg.*require"):
        full_face_mask_at(without, hw, 128, "require", source="07.jpg")
    with pytest.raises(DFLFormatError, match="unknown mask policy"):
        full_face_mask_at(without, hw, 128, "bogus")


def test_file_without_landmarks() -> None:
    meta = DFLMeta()
    with pytest.raises(DFLFormatError, match="plain.jpg.*no landmarks"):
        face_masks_at(meta, (64, 64), 32, "xseg", "plain.jpg")
    full, em = face_masks_at(meta, (64, 64), 32, "full", "plain.jpg")
    assert full.min() == 1.0 and em.max() == 0.0


def test_soft_xseg_is_cubic_resized_and_clipped() -> None:
    """Cubic resizing overshoots at the soft mask's edges; DeepFaceLab clips back to [0, 1]."""
    meta = load_meta(FIXTURES / "dfl_wf_05_flip_rotm8_xseg128_soft.jpg")
    mask = meta.xseg_mask()
    cubic = cv2.resize(mask, (512, 512), interpolation=cv2.INTER_CUBIC)
    assert cubic.min() < 0 or cubic.max() > 1  # premise: the overshoot exists
    full = full_face_mask_at(meta, (512, 512), 512)
    np.testing.assert_array_equal(full[..., 0], np.clip(cubic, 0, 1))


def test_recrop_to_another_face_type() -> None:
    """A whole_face file trained as full_face: the warped hull mask agrees with a hull drawn directly
    from the landmarks moved into the full_face crop (IoU measured 0.978; bound 0.95)."""
    meta = load_meta(FIXTURES / "dfl_wf_07_noxseg_iepolys.jpg")
    same = face_masks_at(meta, meta.image_hw, 128, face_type="wf")
    for got, ref in zip(same, face_masks_at(meta, meta.image_hw, 128), strict=True):
        np.testing.assert_array_equal(got, ref)
    full, em = face_masks_at(meta, meta.image_hw, 128, face_type="f")
    mat = face_transform_mat(meta.landmarks, 128, "full_face")
    direct = hull_mask(transform_points(meta.landmarks, mat), (128, 128)) > 0
    warped = full > 0.5
    iou = (direct & warped).sum() / (direct | warped).sum()
    assert iou > 0.95
    assert warped.sum() > same[0].sum() * 1.2  # a tighter crop: the face fills more of the frame
    assert em.max() == 1.0 and np.array_equal(
        full_face_mask_at(meta, meta.image_hw, 128, face_type="f"), full
    )


def _whole_image_eyes_mouth(landmarks: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Spec §5 written out over the whole image, no windows: the reference for the windowed version."""
    h = shape_hw[0]
    pts = landmarks.astype(np.int32)
    blur = h // 16 + (1 - (h // 16) % 2)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (h // 32, h // 32))
    total = np.zeros(shape_hw, np.float32)
    for ranges in (((36, 42), (42, 48)), ((60, 68),)):
        part = np.zeros(shape_hw, np.float32)
        for a, b in ranges:
            cv2.fillConvexPoly(part, cv2.convexHull(pts[a:b]), (1,))
        total += cv2.GaussianBlur(cv2.dilate(part, kernel), (blur, blur), 0)
    return np.clip(total, 0, 1)[..., None]


def test_windowed_eyes_mouth_equals_whole_image_computation() -> None:
    """Random faces of several sizes, scales and offsets, many touching or leaving the image edges."""
    base = load_meta(FIXTURES / "dfl_wf_01_xseg256_binary.jpg").landmarks
    rng = np.random.default_rng(0)
    for _ in range(40):
        size = int(rng.choice([256, 300, 512]))
        shape = (size, int(size * rng.uniform(0.8, 1.2)))
        lm = (base - 256) * rng.uniform(0.3, 1.6) * size / 512 + size / 2 + rng.normal(0, size * 0.3, 2)
        lm = (lm + rng.normal(0, 2, (68, 2))).astype(np.float32)
        np.testing.assert_array_equal(eyes_mouth_mask(lm, shape), _whole_image_eyes_mouth(lm, shape))
