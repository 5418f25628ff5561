"""Face-crop geometry: Umeyama against scikit-image, crops against DeepFaceLab's stored matrices.

The mean-face template is estimated from the fixtures (see torchsae/dfl/geometry.py), so the crop test
is held out: each fixture is checked against a template estimated from the *other* five. Measured:
landmarks land within 0.09 px (at 512 px) of DeepFaceLab's with the shipped template and within 0.11 px
held out (crop corners within 0.06 frame px); the tolerances are 0.25 px and 0.1 px.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from skimage.transform import SimilarityTransform

import torchsae.dfl.geometry as geometry
from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.geometry import (
    FACE_TYPE_PADDING,
    TEMPLATE_LANDMARKS,
    WHOLE_FACE_CENTRE_SHIFT,
    face_transform_mat,
    invert_affine,
    transform_points,
    umeyama,
)
from torchsae.dfl.meta import load_meta

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
FACES = sorted(p.name for p in FIXTURES.glob("dfl_*.jpg"))


def test_umeyama_matches_scikit_image() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(33, 2)) * 50 + 200
    angle, scale = 0.3, 2.5
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = scale * src @ rot.T + (10, -4) + rng.normal(scale=0.5, size=src.shape)
    ours = umeyama(src, dst)
    reference = SimilarityTransform.from_estimate(src, dst)
    np.testing.assert_allclose(ours, reference.params[:2], atol=1e-9)


def test_transform_points_and_inverse() -> None:
    mat = np.array([[2.0, -0.5, 10.0], [0.5, 2.0, -3.0]])
    pts = np.array([[0.0, 0.0], [1.0, 2.0], [-4.0, 7.5]])
    np.testing.assert_allclose(transform_points(pts, mat), [[10, -3], [11, 1.5], [-1.75, 10]])
    np.testing.assert_allclose(
        transform_points(transform_points(pts, mat), mat, invert=True), pts, atol=1e-12
    )
    np.testing.assert_allclose(invert_affine(invert_affine(mat)), mat, atol=1e-12)


def _template_point_estimate(meta) -> np.ndarray:
    """Template-space positions of the 33 fit landmarks, undoing the crop's padding and centre shift."""
    side = 1 + 2 * math.sqrt(2) * FACE_TYPE_PADDING[meta.face_type]
    centre = np.array([0.5, 0.5])
    if meta.face_type == "whole_face":
        centre[1] -= WHOLE_FACE_CENTRE_SHIFT
    return meta.landmarks[TEMPLATE_LANDMARKS].astype(np.float64) * side / 512 + centre - side / 2


@pytest.mark.parametrize("held_out", FACES)
def test_crop_matches_deepfacelab_held_out(held_out: str, monkeypatch: pytest.MonkeyPatch) -> None:
    metas = {name: load_meta(FIXTURES / name) for name in FACES}
    template = np.mean([_template_point_estimate(m) for n, m in metas.items() if n != held_out], axis=0)
    monkeypatch.setattr(geometry, "_TEMPLATE", template)
    meta = metas[held_out]
    mat = face_transform_mat(meta.source_landmarks, 512, meta.face_type)
    assert np.abs(transform_points(meta.source_landmarks, mat) - meta.landmarks).max() < 0.25
    corners = [(0, 0), (512, 0), (512, 512)]
    ours = transform_points(corners, mat, invert=True)
    theirs = transform_points(corners, meta.image_to_face_mat, invert=True)
    assert np.abs(ours - theirs).max() < 0.1  # frame pixels


def test_crop_of_an_aligned_face_is_a_scaling() -> None:
    """A whole_face crop's own landmarks, re-cropped as whole_face at 128, give (about) a 1/4 scaling;
    as full_face the crop is tighter: magnified by the ratio of the padded square sides."""
    meta = load_meta(FIXTURES / "dfl_wf_01_xseg256_binary.jpg")
    mat = face_transform_mat(meta.landmarks, 128, "wf")
    np.testing.assert_allclose(mat[:, :2], [[0.25, 0], [0, 0.25]], atol=1e-3)
    np.testing.assert_allclose(mat[:, 2], [0, 0], atol=0.05)  # output pixels
    tighter = face_transform_mat(meta.landmarks, 128, "whole_face")
    np.testing.assert_allclose(tighter, mat)
    full = face_transform_mat(meta.landmarks, 128, "f")
    ratio = (1 + 2 * math.sqrt(2) * 0.40) / (1 + 2 * math.sqrt(2) * 0.2109375)
    assert np.hypot(*full[0, :2]) == pytest.approx(0.25 * ratio, rel=1e-3)


def test_no_align_removes_rotation() -> None:
    meta = load_meta(FIXTURES / "dfl_wf_05_flip_rotm8_xseg128_soft.jpg")  # a rotated face
    aligned = face_transform_mat(meta.source_landmarks, 256, "full_face")
    no_align = face_transform_mat(meta.source_landmarks, 256, "full_face_no_align")
    assert abs(aligned[0, 1]) > 0.01 and abs(no_align[0, 1]) < 1e-9 and abs(no_align[1, 0]) < 1e-9
    assert no_align[0, 0] == pytest.approx(no_align[1, 1])


def test_bad_face_types_and_shapes() -> None:
    lm = load_meta(FIXTURES / FACES[0]).landmarks
    with pytest.raises(DFLFormatError, match="not supported"):
        face_transform_mat(lm, 128, "head")
    with pytest.raises(DFLFormatError, match="not one of"):
        face_transform_mat(lm, 128, "mark_only")
    with pytest.raises(DFLFormatError, match="expected"):
        face_transform_mat(lm[:10], 128, "wf")
