"""The synthetic face as 3-D points: one geometry that both the landmarks and the pixels come from.

Why one geometry: a training pipeline crops, masks and weights losses by the landmarks (eyes/mouth
priority, hull masks), so landmarks that disagree with the pixels would teach the model nonsense. Here
every landmark and every polygon that gets drawn is a point of the same posed 3-D model.

The model is deliberately simple. Points live in a frame centred on the 512-pixel crop (x right, y
down, z towards the camera); their depth comes from a smooth dome plus per-feature bumps (the nose
sticks out, lips a little). A pose is a real rotation (yaw about the vertical axis, pitch about the
horizontal one, roll in the image plane) with an orthographic projection, so yaw shifts and compresses
features horizontally and pitch vertically, as the brief's 2-D approximation asks, but consistently.
Afterwards the face is re-centred on its inner features, the way DeepFaceLab's alignment centres a
``whole_face`` crop, and jittered by the scene's small residual scale and shift.

Landmarks follow the iBUG 68-point index layout DeepFaceLab uses: jaw 0-16 (image left to right),
brows 17-26, nose bridge 27-30, nostril base 31-35, eyes 36-47 (corner, two upper-lid points, corner,
two lower-lid points), outer lips 48-59 and inner lips 60-67.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from torchsae.demo.params import Identity, Scene

CROP = 512
FEATURES = np.r_[17:68]  # the inner landmarks the crop is centred on (not the jaw)


@dataclass
class FaceShape:
    """Posed, projected geometry in crop pixels; every array is float32 (N, 2)."""

    landmarks: np.ndarray  # (68, 2)
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # polygons and curves by name
    iris: list[tuple[np.ndarray, tuple[float, float], float]] = field(
        default_factory=list
    )  # centre, axes, angle


def catmull_rom(points: np.ndarray, samples: int = 6, closed: bool = False) -> np.ndarray:
    """A smooth curve through ``points`` (N, D); why: a handful of control points, drawn without kinks."""
    pts = np.asarray(points, np.float64)
    if closed:
        ext = np.vstack([pts[-1:], pts, pts[:2]])
    else:
        ext = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    p0, p1, p2, p3 = ext[:-3], ext[1:-2], ext[2:-1], ext[3:]
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    a, b, c, d = (p[:, None, :] for p in (p0, p1, p2, p3))
    curve = 0.5 * (
        2 * b + (-a + c) * t + (2 * a - 5 * b + 4 * c - d) * t**2 + (-a + 3 * b - 3 * c + d) * t**3
    )
    curve = curve.reshape(-1, pts.shape[1])
    return curve if closed else np.vstack([curve, pts[-1:]])


def _spow(v: np.ndarray, p: float) -> np.ndarray:
    return np.sign(v) * np.abs(v) ** p


class _Builder:
    """Collects the canonical (frontal, neutral-pose) 3-D points of one face."""

    def __init__(self, ident: Identity, scene: Scene) -> None:
        self.i, self.s = ident, scene
        self.top = ident.eye_y + 18.0  # ear level, where the jaw line starts
        self.parts: dict[str, np.ndarray] = {}

    def surface_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Depth of the face surface: a dome over the whole face."""
        i = self.i
        u = (np.asarray(x) / (1.15 * i.jaw_width)) ** 2 + (
            (np.asarray(y) - self.top - 20) / (1.3 * i.jaw_length)
        ) ** 2
        return i.face_depth * np.sqrt(np.clip(1.0 - u, 0.02, 1.0))

    def on_surface(self, xy: np.ndarray, lift: float | np.ndarray = 0.0) -> np.ndarray:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        z = self.surface_z(xy[:, 0], xy[:, 1]) + lift
        return np.column_stack([xy, z])

    def jaw(self) -> np.ndarray:
        i, s = self.i, self.s
        theta = np.linspace(0.0, np.pi, 17)
        p = 2.0 / i.jaw_square
        drop = 20.0 * s.mouth_open  # the chin follows an opening mouth
        x = -i.jaw_width * _spow(np.cos(theta), p)
        sin = np.abs(np.sin(theta))
        y = self.top + (i.jaw_length + drop) * sin**p
        z = i.face_depth * 0.8 * sin**1.5
        return np.column_stack([x, y, z])

    def brows(self) -> np.ndarray:
        i, s = self.i, self.s
        raise_ = 11.0 * s.brow_raise
        out = []
        for side in (-1.0, 1.0):
            inner, outer = i.eye_spacing / 2 - 14.0, i.eye_spacing / 2 + i.eye_width + 28.0
            t = np.linspace(0.0, 1.0, 5)  # outer -> inner
            x = side * (outer + (inner - outer) * t)
            arch = np.sin(np.pi * (0.15 + 0.7 * t)) * i.brow_arch
            y = i.eye_y - i.brow_gap + 22.0 * (1 - t) ** 2 + 8.0 * t - arch - raise_ * (0.7 + 0.6 * t)
            pts = np.column_stack([x, y])
            pts = pts if side < 0 else pts[::-1]  # image left to right for both brows
            out.append(pts)
            # the drawn brow: a band around the landmark line, thickest near the nose
            half = i.brow_thickness * np.linspace(0.35, 0.6, 5)
            half = half if side < 0 else half[::-1]
            offset = np.column_stack([np.zeros(5), half])
            band = np.vstack([pts - offset, (pts + offset)[::-1]])
            self.parts["brow_l" if side < 0 else "brow_r"] = self.on_surface(band, 3.0)
        return self.on_surface(np.vstack(out), 3.0)

    def nose(self) -> np.ndarray:
        i = self.i
        tip_y = i.eye_y + i.nose_length
        bridge = np.column_stack([np.zeros(4), np.linspace(i.eye_y + 4, tip_y, 4)])
        base = np.array(
            [
                [-i.nose_width, tip_y + 21],
                [-i.nose_width / 2, tip_y + 26],
                [0.0, tip_y + 29],
                [i.nose_width / 2, tip_y + 26],
                [i.nose_width, tip_y + 21],
            ]
        )
        lift = np.r_[np.linspace(0.15, 1.0, 4), [0.3, 0.55, 0.65, 0.55, 0.3]] * i.nose_depth
        return self.on_surface(np.vstack([bridge, base]), lift)

    def eyes(self) -> tuple[np.ndarray, list[np.ndarray]]:
        i, s = self.i, self.s
        lms, extra = [], []
        opening = s.eye_open
        for side in (-1.0, 1.0):
            inner = np.array([side * i.eye_spacing / 2, i.eye_y])
            outer = np.array([side * (i.eye_spacing / 2 + i.eye_width), i.eye_y - i.eye_tilt])
            left, right = (outer, inner) if side < 0 else (inner, outer)
            a, b = left + (right - left) / 3, left + 2 * (right - left) / 3
            up = np.array([0.0, -i.eye_height * 0.62 * opening - 0.5])
            down = np.array([0.0, i.eye_height * 0.38 * opening + 0.5])
            pts = np.array([left, a + up, b + up, right, b + down, a + down])
            lms.append(pts)
            crease = np.array([left, a + up * 1.25 + [0, -7], b + up * 1.25 + [0, -7], right]) + [0, -1.5]
            extra.append(crease)
        return self.on_surface(np.vstack(lms), -6.0), [self.on_surface(c, -3.0) for c in extra]

    def mouth(self) -> np.ndarray:
        i, s = self.i, self.s
        y0 = i.eye_y + i.nose_length + i.mouth_y
        w = i.mouth_width + 7.0 * s.smile
        cy = y0 - 10.0 * s.smile  # corners rise with a smile
        gap = 38.0 * s.mouth_open
        up_in, lo_in = y0 - 0.15 * gap, y0 + 0.85 * gap + 0.8
        smile_dip = 4.0 * max(s.smile, 0.0)  # the middle of the lower lip drops in a smile
        outer_upper = [
            [-w, cy],
            [-0.62 * w, up_in - i.lip_upper * 0.85],
            [-0.26 * w, up_in - i.lip_upper * 1.15],
            [0.0, up_in - i.lip_upper * 0.9],
            [0.26 * w, up_in - i.lip_upper * 1.15],
            [0.62 * w, up_in - i.lip_upper * 0.85],
            [w, cy],
        ]
        outer_lower = [
            [0.62 * w, lo_in + i.lip_lower * 0.8 + smile_dip * 0.6],
            [0.3 * w, lo_in + i.lip_lower * 0.98 + smile_dip],
            [0.0, lo_in + i.lip_lower + smile_dip],
            [-0.3 * w, lo_in + i.lip_lower * 0.98 + smile_dip],
            [-0.62 * w, lo_in + i.lip_lower * 0.8 + smile_dip * 0.6],
        ]
        wi = w - 7.0
        inner = [
            [-wi, cy + 0.5],
            [-0.3 * wi, up_in],
            [0.0, up_in + 0.6],
            [0.3 * wi, up_in],
            [wi, cy + 0.5],
            [0.3 * wi, lo_in + smile_dip * 0.5],
            [0.0, lo_in + smile_dip * 0.6],
            [-0.3 * wi, lo_in + smile_dip * 0.5],
        ]
        pts = np.array(outer_upper + outer_lower + inner)
        lift = np.full(len(pts), 10.0)
        lift[[0, 6, 12, 16]] = 3.0
        return self.on_surface(pts, lift)

    def head_parts(self, jaw: np.ndarray) -> None:
        """Skin outline, hair, ears and neck: drawn, never landmarks."""
        i = self.i
        phi = np.linspace(0.0, np.pi, 15)[1:-1]
        w = i.jaw_width
        forehead = np.column_stack(
            [w * np.cos(phi), self.top - 215 * np.sin(phi), 0.35 * i.face_depth * np.sin(phi)]
        )
        self.parts["skin"] = np.vstack([jaw, forehead])
        vol = 18.0
        phi_h = np.linspace(0.0, np.pi, 17)
        outer = np.column_stack(
            [
                (w + vol) * _spow(np.cos(phi_h), 0.8),
                self.top - 10 - (215 + vol) * _spow(np.sin(phi_h), 0.8),
                np.zeros_like(phi_h),
            ]
        )
        hairline = self.hairline()
        self.parts["hair"] = np.vstack([outer, hairline])  # arc right -> left, then hairline left -> right
        self.parts["hairline"] = hairline
        # The back of the head (hair-covered), behind everything: under yaw it shows beside the face
        # on the far side, so no background peeks through between hair, ears and cheek.
        phi_s = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
        self.parts["skull"] = np.column_stack(
            [(w + 6) * np.cos(phi_s), self.top - 90 - 190 * np.sin(phi_s), np.full(24, -50.0)]
        )
        if i.hair_style == "long":
            back = np.array(
                [[w + 34, 270, -60], [w + 40, 120, -60], [w + 30, -60, -40]]
                + [
                    [(w + 28) * np.cos(a), self.top - 40 - 270 * np.sin(a), -40]
                    for a in np.linspace(0.2, np.pi - 0.2, 9)
                ]
                + [[-w - 30, -60, -40], [-w - 40, 120, -60], [-w - 34, 270, -60]]
            )
            self.parts["hair_back"] = back
        for side, name in ((-1.0, "ear_l"), (1.0, "ear_r")):
            a = np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
            cx, cy = side * (w + 0.25 * i.ear_size), self.top + 4
            ear = np.column_stack(
                [cx + 0.42 * i.ear_size * np.cos(a), cy + i.ear_size * np.sin(a), np.full(16, -22.0)]
            )
            self.parts[name] = ear
        # The neck starts hidden behind the face, at a depth between the jaw corners and the chin, so
        # yaw cannot open a gap between chin and neck.
        nw, nz = 0.66 * w, 0.35 * i.face_depth
        self.parts["neck"] = np.array(
            [[-nw, self.top, nz], [-nw - 4, 300, nz], [nw + 4, 300, nz], [nw, self.top, nz]]
        )

    def hairline(self) -> np.ndarray:
        """Where hair meets forehead, left temple to right temple (style-dependent)."""
        i = self.i
        w = i.jaw_width - 6.0
        x = np.linspace(-w, w, 11)
        temple_y = self.top - 42.0
        top_y = i.eye_y - i.hairline
        y = temple_y + (top_y - temple_y) * np.clip(1 - (x / (w + 8)) ** 2, 0, 1) ** 0.5
        if i.hair_style == "fringe":
            fringe_y = i.eye_y - i.brow_gap - 24.0
            y = np.minimum(np.maximum(y, fringe_y - 6.0 * (np.arange(11) % 2)), temple_y)
            y[0], y[-1] = temple_y, temple_y
        elif i.hair_style == "parted":
            sweep = np.clip((x[-1] * 0.4 - x) / (2 * w), 0, 1)  # hair swept down on the image-left side
            y = y + sweep * (i.hairline - i.brow_gap - 30.0) * np.clip(1 - (x / w) ** 2, 0, 1) ** 0.3
        # Flatten the depth towards the temples so the hairline stays on the skin outline under yaw.
        pts = self.on_surface(np.column_stack([x, y]), 2.0)
        pts[:, 2] *= np.sqrt(np.clip(1 - (x / (w + 6)) ** 2, 0.0, 1.0)) * 0.8 + 0.2
        return pts


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def build_face(ident: Identity, scene: Scene) -> FaceShape:
    """Pose and project one face: landmarks (68, 2) plus every polygon the renderer draws."""
    b = _Builder(ident, scene)
    jaw = b.jaw()
    eyes, creases = b.eyes()
    landmarks3 = np.vstack([jaw, b.brows(), b.nose(), eyes, b.mouth()])
    b.head_parts(jaw)
    b.parts["crease_l"], b.parts["crease_r"] = creases

    iris3 = []
    for k in (0, 1):
        eye = eyes[6 * k : 6 * k + 6]
        centre = eye[[0, 3]].mean(axis=0)
        width = np.linalg.norm(eye[3, :2] - eye[0, :2])
        r = ident.iris_ratio * width
        travel = np.array([scene.gaze_x * (width / 2 - r) * 0.7, scene.gaze_y * ident.eye_height * 0.25, 2.0])
        iris3.append((centre + travel, r))

    rot = _rotation(scene.yaw, scene.pitch, scene.roll)
    pivot = np.array([0.0, b.top, -0.6 * ident.face_depth])

    def project(p: np.ndarray) -> np.ndarray:
        return ((p - pivot) @ rot.T + pivot)[:, :2]

    lm = project(landmarks3)
    # Re-centre on the inner features like DeepFaceLab's alignment does, then the residual jitter.
    offset = landmarks3[FEATURES, :2].mean(axis=0) - lm[FEATURES].mean(axis=0)
    centre = np.array([CROP / 2 + scene.shift_x, CROP / 2 + scene.shift_y])

    def place(p: np.ndarray) -> np.ndarray:
        return ((project(p) + offset) * scene.scale + centre).astype(np.float32)

    shape = FaceShape(landmarks=place(landmarks3))
    shape.parts = {name: place(p) for name, p in b.parts.items()}
    # The iris is a disc facing the camera: it foreshortens with yaw and pitch and turns with roll.
    for centre3, r in iris3:
        axes = (
            float(r * np.cos(np.radians(scene.yaw)) * scene.scale),
            float(r * np.cos(np.radians(scene.pitch)) * scene.scale),
        )
        shape.iris.append((place(centre3[None])[0], axes, float(scene.roll)))
    return shape
