"""Yaw from landmarks and the uniform-yaw stream (spec §3 ``uniform_yaw``)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines import make_loader
from pipelines.index import build_index
from pipelines.yaw import (
    FACE_MODEL_3D,
    MIRROR,
    YAW_BINS,
    UniformYawStream,
    estimate_yaw,
    estimate_yaws,
    index_yaws,
    yaw_bins,
)
from torchsae.demo.faceset import make_demo_faceset, scene_for
from torchsae.demo.geometry import build_face
from torchsae.demo.params import DEMO_IDENTITIES


def _demo_faces(count: int) -> list[tuple[float, np.ndarray]]:
    """(true yaw in degrees, landmarks) of demo faces: an independently built 3-D face model."""
    out = []
    for name in "AB":
        for i in range(count):
            scene = scene_for(0, 0, name, i)
            out.append((scene.yaw, build_face(DEMO_IDENTITIES[name], scene).landmarks.astype(np.float64)))
    return out


def test_yaw_of_a_projected_reference_face_is_recovered() -> None:
    size = 512.0
    camera = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1.0]])
    for degrees in (-40.0, -15.0, 0.0, 10.0, 30.0):
        yaw = math.radians(degrees)
        # nose to the image's right for positive yaw: OpenCV rotation of -yaw about its y axis
        rvec = np.array([0.0, -yaw, 0.0])
        points, _ = cv2.projectPoints(FACE_MODEL_3D, rvec, np.array([0.0, 0.4, 6.0]), camera, np.zeros(4))
        landmarks = points[:, 0]
        assert math.degrees(estimate_yaw(landmarks, size)) == pytest.approx(degrees, abs=0.05)
        if degrees > 0:  # the sign convention as documented: the nose tip (30) moves right
            assert landmarks[30, 0] > (landmarks[36, 0] + landmarks[45, 0]) / 2


def test_yaw_tracks_an_independent_face_model() -> None:
    faces = _demo_faces(60)
    true = np.array([y for y, _ in faces])
    est = np.degrees([estimate_yaw(lm, 512) for _, lm in faces])
    assert np.corrcoef(true, est)[0, 1] > 0.98
    slope, intercept = np.polyfit(true, est, 1)
    assert 0.5 < slope < 1.3 and abs(intercept) < 2.0  # another face shape: scale differs a little
    assert (np.sign(est[np.abs(true) > 5]) == np.sign(true[np.abs(true) > 5])).all()
    frontal = dataclasses.replace(scene_for(0, 0, "A", 1), yaw=0.0, pitch=0.0, roll=0.0)
    assert abs(math.degrees(estimate_yaw(build_face(DEMO_IDENTITIES["A"], frontal).landmarks, 512))) < 2.0


def test_mirrored_face_has_the_negated_yaw() -> None:
    assert sorted(MIRROR.tolist()) == list(range(68)) and (MIRROR[MIRROR] == np.arange(68)).all()
    np.testing.assert_allclose(FACE_MODEL_3D[MIRROR, 0], -FACE_MODEL_3D[:, 0])
    for _, lm in _demo_faces(5):
        mirrored = lm[MIRROR].copy()
        mirrored[:, 0] = 512 - mirrored[:, 0]
        assert estimate_yaw(mirrored, 512) == pytest.approx(-estimate_yaw(lm, 512), abs=1e-3)


def test_missing_landmarks_give_nan() -> None:
    lm = np.full((68, 2), np.nan)
    assert math.isnan(estimate_yaw(lm, 256))
    yaws = estimate_yaws(np.stack([lm, _demo_faces(1)[0][1]]), np.array([256, 512]))
    assert math.isnan(yaws[0]) and math.isfinite(yaws[1])


def test_bins_by_hand() -> None:
    width = 2.4 / 128
    yaws = np.array([-1.2, -1.2 + 0.5 * width, -1.2 + width, 0.0, -0.001, 1.2 - 1e-6, 1.2, 3.0, -3.0, np.nan])
    expected = [0, 0, 1, 64, 63, 127, 127, 127, 0, YAW_BINS]
    assert yaw_bins(yaws).tolist() == expected


def _yaws_with_bins(counts: dict[int, int]) -> tuple[np.ndarray, dict[int, set[int]]]:
    """Yaws putting ``count`` faces in each bin (interleaved in file order) and the members per bin."""
    width = 2.4 / 128
    labels = [b for b, c in counts.items() for _ in range(c)]
    order = np.random.default_rng(0).permutation(len(labels))
    yaws = np.array([-1.2 + (labels[i] + 0.5) * width for i in order])
    members: dict[int, set[int]] = {b: set() for b in counts}
    for row, i in enumerate(order):
        members[labels[i]].add(row)
    return yaws, members


def test_each_epoch_visits_every_non_empty_bin_once() -> None:
    yaws, members = _yaws_with_bins({3: 50, 64: 1, 100: 10, 127: 5})
    stream = UniformYawStream(yaws, seed=7)
    assert stream.n == 4
    seen: dict[int, list[int]] = {b: [] for b in members}
    orders = set()
    for epoch in range(800):
        picks = stream.epoch_indices(epoch)
        bins = [next(b for b, m in members.items() if i in m) for i in picks]
        assert sorted(bins) == sorted(members)
        orders.add(tuple(bins))
        for b, i in zip(bins, picks, strict=True):
            seen[b].append(int(i))
    assert len(orders) > 12  # the bins are shuffled anew per epoch (24 orders possible)
    # inside a bin every face is drawn, about equally often
    counts = np.bincount(seen[3], minlength=len(yaws))[sorted(members[3])]
    assert (counts > 0).all() and counts.max() < 5 * 800 / 50
    np.testing.assert_array_equal(UniformYawStream(yaws, seed=7).epoch_indices(3), stream.epoch_indices(3))


def test_ranks_split_each_epoch() -> None:
    yaws, _ = _yaws_with_bins({b: 2 for b in range(0, 128, 4)})
    streams = [UniformYawStream(yaws, rank=r, world=3, seed=1) for r in range(3)]
    union = np.concatenate([s.epoch_indices(5) for s in streams])
    full = UniformYawStream(yaws, seed=1).epoch_indices(5)
    assert all(len(s.epoch_indices(5)) == math.ceil(32 / 3) for s in streams)
    assert set(union.tolist()) == set(full.tolist())
    few = [UniformYawStream(np.array([0.1, 0.1]), rank=r, world=4, seed=1) for r in range(4)]  # 1 bin
    assert all(s.epoch_indices(0).tolist() in ([0], [1]) for s in few)


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_faceset(tmp_path_factory.mktemp("yaw"), 12, seed=3, truth_count=0).dirs[0]


def test_index_stores_yaw_and_the_loader_samples_by_it(faceset: Path) -> None:
    index = build_index(faceset, 32, "xseg", workers=1, progress=False).index
    stored = np.load(index.directory / "yaw.npy")
    np.testing.assert_array_equal(stored, estimate_yaws(index.landmarks, index.image_sizes))
    np.testing.assert_array_equal(index_yaws(index), stored)
    assert np.isfinite(stored).all()

    loader = make_loader("torch", index, 2, seed=4, workers=0, uniform_yaw=True)
    bins = yaw_bins(stored)
    per_epoch = len(np.unique(bins))
    assert per_epoch >= 4  # the demo's poses spread over several bins
    drawn = np.concatenate([next(loader)["indices"].numpy() for _ in range(per_epoch // 2)])
    assert len(set(bins[drawn].tolist())) == len(drawn)  # within an epoch: one face per bin
    state = loader.state_dict()
    following = next(loader)["indices"]
    loader.load_state_dict(state)
    assert next(loader)["indices"].tolist() == following.tolist()


def test_uniform_yaw_asked_of_dali_uses_the_dataloader(faceset: Path) -> None:
    from pipelines.torch_loader import TorchLoader

    index = build_index(faceset, 32, "xseg", workers=1, progress=False).index
    with pytest.warns(UserWarning, match="DataLoader backend"):
        loader = make_loader("dali", index, 2, workers=0, uniform_yaw=True)
    assert isinstance(loader, TorchLoader) and isinstance(loader.stream, UniformYawStream)
