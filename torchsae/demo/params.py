"""What a synthetic face is made of: who it is (:class:`Identity`) and how it is seen (:class:`Scene`).

Why two separate records: a face swap must move *identity* from B onto A while keeping A's pose,
expression and lighting. The demo faceset makes that measurable by drawing every scene (pose,
expression, light, background) from one shared distribution, whoever the identity is, and by rendering
held-out truth pairs that reuse one :class:`Scene` for both identities. Identity traits never vary
between the images of one identity, so everything that differs inside a pair is identity.

All lengths are pixels of the 512-pixel ``whole_face`` crop, colours are BGR in 0..255, angles degrees.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

BGR = tuple[float, float, float]
HAIR_STYLES = ("short", "long", "fringe", "parted")


@dataclass(frozen=True)
class Identity:
    """Fixed traits of one synthetic person (face shape, features, colours, hair)."""

    name: str
    skin: BGR
    jaw_width: float  # half width of the jaw at ear level
    jaw_length: float  # ear level to chin
    jaw_square: float  # super-ellipse exponent of the jaw line: 2 round, 3 square
    face_depth: float  # how far the face bulges towards the camera (drives yaw/pitch parallax)
    eye_y: float  # eye-corner height relative to the crop centre
    eye_spacing: float  # distance between the inner eye corners
    eye_width: float
    eye_height: float  # lid opening of a relaxed eye
    eye_tilt: float  # outer corner above the inner one by this much
    iris: BGR
    iris_ratio: float  # iris radius / eye width
    brow_gap: float  # brow peak above the eye line
    brow_thickness: float
    brow_arch: float
    nose_length: float  # eye line to nose tip
    nose_width: float  # half width of the nostril wings
    nose_depth: float
    mouth_y: float  # mouth corners below the nose tip
    mouth_width: float  # half width
    lip_upper: float
    lip_lower: float
    lips: BGR
    hair: BGR
    hair_style: str
    hairline: float  # hairline height above the eye line
    ear_size: float

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for the truth manifest)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Scene:
    """Everything about one picture that is not identity; both identities draw it from one distribution."""

    yaw: float
    pitch: float
    roll: float
    mouth_open: float  # 0 closed .. 1 wide open
    smile: float  # -0.4 frown .. 1 broad smile
    eye_open: float  # 0 closed .. 1.3 wide
    brow_raise: float  # -0.6 frown .. 1 raised
    gaze_x: float  # -1 .. 1 of the free iris travel
    gaze_y: float
    light_azimuth: float  # direction the light comes from, in the image plane (0 = from the right)
    light_elevation: float  # 90 = straight from the camera
    ambient: float
    diffuse: float
    temperature: float  # -1 cold (blue) .. 1 warm (orange)
    exposure: float
    scale: float  # residual alignment jitter of the crop
    shift_x: float
    shift_y: float
    detail_seed: int  # background, hair strands and noise: identical for the two renders of a truth pair

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for the truth manifest)."""
        return dataclasses.asdict(self)


def _clipped_normal(rng: np.random.Generator, sd: float, limit: float) -> float:
    return float(np.clip(rng.normal(0.0, sd), -limit, limit))


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one pose / expression / lighting / background from the single shared distribution."""
    # about half the faces with a closed mouth, the rest slightly open, sometimes wide
    mouth = float(rng.uniform(0.0, 1.0) ** 2) if rng.random() < 0.55 else 0.0
    blink = rng.random() < 0.08
    return Scene(
        yaw=_clipped_normal(rng, 11.0, 28.0),
        pitch=_clipped_normal(rng, 7.0, 18.0),
        roll=_clipped_normal(rng, 5.0, 12.0),
        mouth_open=mouth,
        smile=float(rng.uniform(-0.4, 1.0)),
        eye_open=float(rng.uniform(0.0, 0.25) if blink else rng.uniform(0.6, 1.25)),
        brow_raise=float(rng.uniform(-0.6, 1.0)),
        gaze_x=float(rng.uniform(-1.0, 1.0)),
        gaze_y=float(rng.uniform(-0.6, 0.6)),
        light_azimuth=float(rng.uniform(0.0, 360.0)),
        light_elevation=float(rng.uniform(25.0, 80.0)),
        ambient=float(rng.uniform(0.3, 0.5)),
        diffuse=float(rng.uniform(0.45, 0.7)),
        temperature=float(rng.uniform(-1.0, 1.0)),
        exposure=float(rng.uniform(0.85, 1.12)),
        scale=float(rng.uniform(0.96, 1.04)),
        shift_x=float(rng.uniform(-8.0, 8.0)),
        shift_y=float(rng.uniform(-8.0, 8.0)),
        detail_seed=int(rng.integers(0, 2**31 - 1)),
    )


# Two hand-made, clearly different people for the default A/B demo: separable at a glance (skin,
# face shape, hair, eyes) so a swap that works is visible in the preview, and a swap that does not
# is visible in the score.
DEMO_IDENTITIES: dict[str, Identity] = {
    "A": Identity(
        name="A",
        skin=(150.0, 182.0, 226.0),
        jaw_width=148.0,
        jaw_length=205.0,
        jaw_square=2.2,
        face_depth=95.0,
        eye_y=-50.0,
        eye_spacing=80.0,
        eye_width=52.0,
        eye_height=17.0,
        eye_tilt=3.0,
        iris=(150.0, 110.0, 60.0),
        iris_ratio=0.23,
        brow_gap=44.0,
        brow_thickness=11.0,
        brow_arch=12.0,
        nose_length=60.0,
        nose_width=29.0,
        nose_depth=42.0,
        mouth_y=74.0,
        mouth_width=55.0,
        lip_upper=11.0,
        lip_lower=16.0,
        lips=(120.0, 120.0, 200.0),
        hair=(40.0, 80.0, 140.0),
        hair_style="fringe",
        hairline=120.0,
        ear_size=30.0,
    ),
    "B": Identity(
        name="B",
        skin=(95.0, 125.0, 170.0),
        jaw_width=136.0,
        jaw_length=225.0,
        jaw_square=2.9,
        face_depth=110.0,
        eye_y=-56.0,
        eye_spacing=74.0,
        eye_width=50.0,
        eye_height=13.0,
        eye_tilt=-1.0,
        iris=(30.0, 50.0, 75.0),
        iris_ratio=0.26,
        brow_gap=38.0,
        brow_thickness=16.0,
        brow_arch=5.0,
        nose_length=70.0,
        nose_width=34.0,
        nose_depth=50.0,
        mouth_y=70.0,
        mouth_width=58.0,
        lip_upper=13.0,
        lip_lower=18.0,
        lips=(85.0, 85.0, 150.0),
        hair=(25.0, 25.0, 30.0),
        hair_style="short",
        hairline=128.0,
        ear_size=34.0,
    ),
}


def random_identity(name: str, rng: np.random.Generator) -> Identity:
    """A random person within plausible ranges (for identity names other than the presets)."""
    u = rng.uniform
    tone = u(0.0, 1.0)  # light .. dark skin along one realistic axis
    skin = (float(160 - 90 * tone), float(190 - 95 * tone), float(232 - 80 * tone))
    hair_palette = [
        (30, 30, 35),
        (40, 70, 120),
        (60, 110, 170),
        (120, 170, 210),
        (40, 60, 150),
        (150, 150, 150),
    ]
    iris_palette = [(150, 110, 60), (30, 50, 75), (90, 130, 90), (60, 90, 120), (140, 140, 120)]
    return Identity(
        name=name,
        skin=skin,
        jaw_width=u(132, 152),
        jaw_length=u(198, 230),
        jaw_square=u(2.0, 3.0),
        face_depth=u(90, 115),
        eye_y=u(-58, -46),
        eye_spacing=u(72, 84),
        eye_width=u(47, 55),
        eye_height=u(12, 18),
        eye_tilt=u(-2, 5),
        iris=tuple(float(c) for c in iris_palette[int(rng.integers(len(iris_palette)))]),
        iris_ratio=u(0.21, 0.27),
        brow_gap=u(36, 46),
        brow_thickness=u(9, 17),
        brow_arch=u(3, 14),
        nose_length=u(56, 72),
        nose_width=u(26, 36),
        nose_depth=u(38, 52),
        mouth_y=u(66, 78),
        mouth_width=u(50, 60),
        lip_upper=u(9, 14),
        lip_lower=u(13, 19),
        lips=(float(skin[0] * 0.8), float(skin[1] * 0.72), float(min(255.0, skin[2] * 0.98))),
        hair=tuple(float(c) for c in hair_palette[int(rng.integers(len(hair_palette)))]),
        hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
        hairline=u(108, 140),
        ear_size=u(28, 35),
    )


def identity_for(name: str) -> Identity:
    """The hand-made person for ``"A"``/``"B"``; any other name gets a random person seeded by the name itself.

    Identity does not depend on the faceset seed: the seed changes which pictures are drawn, not who
    is in them, so "A" is the same person in every demo run.
    """
    if name in DEMO_IDENTITIES:
        return DEMO_IDENTITIES[name]
    return random_identity(name, np.random.default_rng(zlib.crc32(name.encode("utf-8"))))
