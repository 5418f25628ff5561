"""Head yaw from aligned landmarks, and the uniform-yaw sample stream (spec §3, ``uniform_yaw``).

Why: a faceset cut from video is mostly frontal, so a plain shuffle shows the model few profile
faces. DeepFaceLab's ``uniform_yaw`` splits the faces into 128 yaw bins over [−1.2, 1.2] rad and
samples a non-empty *bin* uniformly (the bins shuffled without replacement), then a face inside it,
so every pose is seen as often as every other. Pretraining forces it on.

**Yaw estimation.** ``cv2.solvePnP`` fits a rigid generic 3-D face (:data:`FACE_MODEL_3D`) to the
file's 68 aligned landmarks with a pinhole camera (focal length = image size, principal point at the
centre, no distortion). The solver is SQPnP, a globally optimal one that keeps the face in front of
the camera: the default iterative solver, started from its own linear guess, often settles on the
depth-inverted mirror pose (nose pointing away from the camera), whose yaw is meaningless. The yaw is the rotation about the vertical axis in a Z·Y·X Euler
decomposition of the fitted rotation. Sign: **positive yaw = the nose points towards the image's
right** (the subject's left).

**The 3-D reference face** is our own, derived from textbook facial proportions, not taken from any
other project. Units are half the outer eye-corner distance (≈ 4.5 cm); axes as OpenCV's camera
(x to the image's right, y down, z away from the camera, so the nose tip has the smallest z). It is
mirror-symmetric: :data:`MIRROR` maps each landmark to its mirror partner, and a mirrored face gets
the negated yaw. The iBUG 68-point layout: jaw 0–16 (image left to right), brows 17–26, nose bridge
27–30, nose base 31–35, eyes 36–47, outer lips 48–59, inner lips 60–67. Only points that barely move
with expression go into the fit (:data:`PNP_POINTS`: jaw line, nose, eye corners; no lips or lids).

Yaws are computed once, when the side index is built (``yaw.npy`` beside ``landmarks.npy``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipelines.torch_loader import ShardedStream

YAW_BINS = 128
YAW_RANGE = 1.2  # radians either side of frontal; faces beyond it fall into the end bins


# The image-left half of the reference face plus the midline: {landmark: (x, y, z)}. From adult
# anthropometric proportions in units of half the outer eye-corner distance (≈ 4.5 cm): inner eye
# corners at ±0.35, nose tip 1.05 below the eye line and ≈ 1 in front of the outer eye corners,
# mouth corners at ±0.55 and 1.75 down, chin 2.5 down, face outline ±1.55 wide and ≈ 0.8 behind the
# eye corners at eye level, receding along the jaw towards the chin.
_HALF_FACE: dict[int, tuple[float, float, float]] = {
    # jaw outline 0..8 (face edge at eye level round to the chin)
    0: (-1.55, 0.10, 0.80),
    1: (-1.52, 0.50, 0.78),
    2: (-1.45, 0.90, 0.72),
    3: (-1.35, 1.30, 0.62),
    4: (-1.20, 1.68, 0.45),
    5: (-0.98, 2.00, 0.20),
    6: (-0.72, 2.25, -0.05),
    7: (-0.38, 2.43, -0.30),
    8: (0.00, 2.50, -0.40),
    # brow 17..21, outer to inner
    17: (-1.15, -0.35, 0.05),
    18: (-0.95, -0.55, -0.15),
    19: (-0.70, -0.62, -0.30),
    20: (-0.45, -0.60, -0.38),
    21: (-0.22, -0.52, -0.42),
    # nose bridge 27..30, root to tip
    27: (0.00, -0.05, -0.40),
    28: (0.00, 0.30, -0.55),
    29: (0.00, 0.65, -0.72),
    30: (0.00, 1.05, -0.95),
    # nose base 31..33, outer nostril to the columella
    31: (-0.35, 1.20, -0.50),
    32: (-0.17, 1.25, -0.62),
    33: (0.00, 1.28, -0.70),
    # eye 36..41: outer corner, upper lid, upper lid, inner corner, lower lid, lower lid
    36: (-1.00, 0.00, 0.00),
    37: (-0.80, -0.12, -0.20),
    38: (-0.55, -0.13, -0.28),
    39: (-0.35, 0.02, -0.30),
    40: (-0.55, 0.10, -0.26),
    41: (-0.80, 0.09, -0.18),
    # outer lips: corner 48, upper 49, 50, centre 51; lower 59, 58, centre 57
    48: (-0.55, 1.75, -0.38),
    49: (-0.35, 1.62, -0.55),
    50: (-0.12, 1.57, -0.66),
    51: (0.00, 1.60, -0.67),
    59: (-0.35, 1.88, -0.52),
    58: (-0.13, 1.95, -0.60),
    57: (0.00, 1.96, -0.61),
    # inner lips: corner 60, upper 61, centre 62; lower 67, centre 66
    60: (-0.45, 1.75, -0.45),
    61: (-0.20, 1.72, -0.60),
    62: (0.00, 1.72, -0.62),
    67: (-0.20, 1.78, -0.58),
    66: (0.00, 1.78, -0.60),
}


def _mirror_pairs() -> np.ndarray:
    """MIRROR[i] = the landmark that i becomes in a left-right mirrored face (iBUG layout)."""
    pairs = [(i, 16 - i) for i in range(8)]
    pairs += [(17 + k, 26 - k) for k in range(5)]
    pairs += [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64), (61, 63), (67, 65)]
    mirror = np.arange(68)
    for a, b in pairs:
        mirror[a], mirror[b] = b, a
    return mirror


MIRROR = _mirror_pairs()


def _build_model() -> np.ndarray:
    model = np.full((68, 3), np.nan)
    for i, (x, y, z) in _HALF_FACE.items():
        model[i] = (x, y, z)
        model[MIRROR[i]] = (-x, y, z)
    assert not np.isnan(model).any(), "every landmark needs a point or a mirrored one"
    return model.astype(np.float64)


FACE_MODEL_3D = _build_model()
PNP_POINTS = np.array([*range(17), *range(27, 36), 36, 39, 42, 45])


def estimate_yaw(landmarks: np.ndarray, image_size: float) -> float:
    """Yaw in radians of one face from its (68, 2) landmarks in a square image of ``image_size`` px.

    NaN when the landmarks are missing (NaN) or the fit fails.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (68, 2) or not np.isfinite(landmarks).all():
        return math.nan
    focal = float(image_size)
    camera = np.array([[focal, 0.0, focal / 2], [0.0, focal, focal / 2], [0.0, 0.0, 1.0]])
    try:
        ok, rvec, _ = cv2.solvePnP(
            FACE_MODEL_3D[PNP_POINTS],
            landmarks[PNP_POINTS],
            camera,
            np.zeros(4),
            flags=cv2.SOLVEPNP_SQPNP,
        )
    except cv2.error:  # degenerate landmarks (all on one point): no pose, like a failed fit
        return math.nan
    if not ok:
        return math.nan
    rotation, _ = cv2.Rodrigues(rvec)
    # R = Rz(roll)·Ry(β)·Rx(pitch) gives R[2,0] = −sin β; a positive β about OpenCV's y axis (down)
    # turns the nose (at −z) towards the image's left, so the yaw we report is −β.
    beta = math.asin(float(np.clip(-rotation[2, 0], -1.0, 1.0)))
    return -beta


def estimate_yaws(landmarks: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    """float32 (N,) yaws for (N, 68, 2) landmarks and their (N,) image sizes (NaN where unknown)."""
    return np.array(
        [estimate_yaw(lm, size) for lm, size in zip(landmarks, image_sizes, strict=True)], np.float32
    )


def yaw_bins(yaws: np.ndarray, bins: int = YAW_BINS, limit: float = YAW_RANGE) -> np.ndarray:
    """int64 bin of each yaw over [−limit, limit]; outside values go to the end bins and faces
    without landmarks (NaN) to an extra bin ``bins`` of their own, so they are still sampled."""
    yaws = np.asarray(yaws, np.float64)
    out = np.full(yaws.shape, bins, np.int64)
    known = np.isfinite(yaws)
    scaled = np.floor((yaws[known] + limit) / (2 * limit) * bins)
    out[known] = np.clip(scaled, 0, bins - 1).astype(np.int64)
    return out


def index_yaws(index: Any) -> np.ndarray:
    """The side index's yaws: ``yaw.npy`` of its generation, or computed now for an older one."""
    stored = Path(index.directory) / "yaw.npy"
    if stored.is_file():
        yaws = np.load(stored)
        if yaws.shape == (len(index),):
            return yaws
    return estimate_yaws(index.landmarks, index.image_sizes)


class UniformYawStream(ShardedStream):
    """A ShardedStream whose epoch is one pass over the non-empty yaw bins.

    Epoch ``e`` (generator seeded with ``seed + e``, identical on every rank): the non-empty bins in a
    random order, then for each bin one face drawn uniformly inside it. Ranks take every
    ``world``-th item as in ShardedStream, so batching, sharding and exact resume are inherited.
    """

    def __init__(self, yaws: np.ndarray, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        bins = yaw_bins(yaws)
        order = np.argsort(bins, kind="stable")
        labels, starts, counts = np.unique(bins[order], return_index=True, return_counts=True)
        super().__init__(len(labels), rank, world, seed, shuffle=True)
        self.members = order  # faces grouped by bin
        self.starts, self.counts = starts.astype(np.int64), counts.astype(np.int64)
        self.labels = labels

    def epoch_indices(self, epoch: int) -> np.ndarray:
        import torch

        generator = torch.Generator().manual_seed(self.seed + epoch)
        bins = torch.randperm(self.n, generator=generator).numpy()
        draws = torch.rand(self.n, generator=generator, dtype=torch.float64).numpy()
        picks = np.minimum((draws * self.counts[bins]).astype(np.int64), self.counts[bins] - 1)
        order = self.members[self.starts[bins] + picks]
        total = self.per_rank * self.world
        order = np.resize(order, total)  # wraps cyclically, even with fewer bins than ranks
        return order[self.rank : total : self.world]
