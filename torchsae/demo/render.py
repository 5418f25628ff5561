"""Draw a synthetic face from :mod:`torchsae.demo.geometry`: 512x512 BGR, landmarks and face mask.

Why procedural and not a GAN or photos: the demo, the tests and the quality benchmark need faces with
exact ground truth (the same pose, expression and light rendered as two identities) that cost nothing
to make, carry no licence or privacy burden, and come out byte-identical for a seed.

How it stays fast (well over 50 faces/s on one core, JPEG encode included): everything sharp is an
anti-aliased OpenCV polygon at 512 pixels; everything smooth (background, lighting, skin unevenness) is
computed at 128 pixels and upsampled once. Lighting is Lambertian on a height field made from the same
posed polygons (a dome over the head, a ridge for the nose, hollows for the eyes, a bulge for the
lips), so shading follows pose and light direction without a 3-D rasteriser.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from torchsae.demo.geometry import CROP, FaceShape, build_face, catmull_rom
from torchsae.demo.params import Identity, Scene

LOW = CROP // 4  # resolution of the smooth layers
_SHIFT = 4  # OpenCV sub-pixel bits for polygon drawing
_ONE = 1 << _SHIFT


@dataclass
class RenderedFace:
    """One synthetic face: what is written to disk and the ground truth that goes with it."""

    image: np.ndarray  # (512, 512, 3) uint8 BGR
    landmarks: np.ndarray  # (68, 2) float32, iBUG-68 layout, crop pixels
    mask: np.ndarray  # (512, 512) uint8 in {0, 1}: face skin without hair, ears and neck

    def xseg_mask(self, size: int = 256) -> np.ndarray:
        """The face mask as DeepFaceLab stores an applied XSeg mask: (size, size, 1) float32 in {0, 1}."""
        small = cv2.resize(self.mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        return (small >= 0.5).astype(np.float32)[:, :, None]


def _pts(points: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return np.round(np.asarray(points) * scale * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, points: np.ndarray, color, scale: float = 1.0, aa: bool = True) -> None:
    cv2.fillPoly(img, [_pts(points, scale)], color, cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT)


def _line(img: np.ndarray, points: np.ndarray, color, thickness: int, closed: bool = False) -> None:
    cv2.polylines(img, [_pts(points)], closed, color, thickness, cv2.LINE_AA, _SHIFT)


def _ellipse(img: np.ndarray, centre, axes, angle: float, color, thickness: int = -1) -> None:
    """An anti-aliased ellipse at sub-pixel precision (centre and half-axes in pixels)."""
    ctr = (int(round(centre[0] * _ONE)), int(round(centre[1] * _ONE)))
    ax = (max(1, int(axes[0] * _ONE)), max(1, int(axes[1] * _ONE)))
    cv2.ellipse(img, ctr, ax, angle, 0, 360, color, thickness, cv2.LINE_AA, _SHIFT)


def _shade(color, factor: float) -> tuple[float, float, float]:
    return tuple(min(255.0, max(0.0, float(c) * factor)) for c in color)


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return tuple(float(x * (1 - t) + y * t) for x, y in zip(a, b, strict=True))


@lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    """Sensor-like grain, made once per process and cropped at a random offset per image."""
    return np.random.default_rng(20240611).normal(0.0, 2.2, (CROP + 64, CROP + 64, 3)).astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A soft, varied backdrop: a random colour field plus blurred shapes, at 128 px then upsampled."""
    base = rng.uniform(30, 220, 3)
    field = rng.normal(0, 35, (4, 4, 3)) + base
    low = cv2.resize(field.astype(np.float32), (LOW, LOW), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):
        color = tuple(float(c) for c in np.clip(base + rng.normal(0, 60, 3), 0, 255))
        x, y = (int(v) for v in rng.integers(0, LOW, 2))
        if rng.random() < 0.5:
            cv2.circle(low, (x, y), int(rng.integers(6, 40)), color, -1, cv2.LINE_AA)
        else:
            w, h = (int(v) for v in rng.integers(8, 60, 2))
            cv2.rectangle(low, (x, y), (x + w, y + h), color, -1, cv2.LINE_AA)
    low = cv2.GaussianBlur(low, (0, 0), 1.2)
    return cv2.resize(np.clip(low, 0, 255).astype(np.uint8), (CROP, CROP), interpolation=cv2.INTER_LINEAR)


def _along(polyline: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points at fractions ``t`` of a polyline's vertex sequence, linearly between vertices."""
    pos = t * (len(polyline) - 1)
    k = np.minimum(pos.astype(int), len(polyline) - 2)
    f = (pos - k)[:, None]
    return polyline[k] * (1 - f) + polyline[k + 1] * f


def _hair(img: np.ndarray, poly: np.ndarray, color, rng: np.random.Generator, outer_n: int) -> None:
    """Fill a hair region and comb strands from its outer edge to its inner edge (three tones)."""
    _fill(img, catmull_rom(poly, 4, closed=True), color)
    outer, inner = poly[:outer_n], poly[outer_n:][::-1]
    n = 45
    t = rng.uniform(0.12, 0.88, n)  # away from the temples, where the band is concave
    a = _along(outer, t)
    b = _along(inner, np.clip(t + rng.normal(0, 0.04, n), 0.0, 1.0))
    m = (a + b) / 2 + rng.normal(0, 6, (n, 2))
    u = np.linspace(0.0, 1.0, 7)[None, :, None]
    curves = (1 - u) ** 2 * a[:, None] + 2 * (1 - u) * u * m[:, None] + u**2 * b[:, None]
    tone = rng.integers(0, 3, n)
    for k, factor in enumerate((0.65, 0.9, 1.45)):
        group = [_pts(c) for c in curves[tone == k]]
        if group:
            cv2.polylines(img, group, False, _shade(color, factor), 1, cv2.LINE_AA, _SHIFT)


def _eye(img: np.ndarray, eye: np.ndarray, iris, ident: Identity, light_xy: np.ndarray) -> np.ndarray:
    """Sclera, iris, pupil and catch-light, clipped to the lid opening; returns the lid contour."""
    upper = catmull_rom(eye[[0, 1, 2, 3]], 6)
    lower = catmull_rom(eye[[3, 4, 5, 0]], 6)
    contour = np.vstack([upper, lower[1:-1]])
    x0, y0 = np.floor(contour.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(contour.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, CROP), min(y1, CROP)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return upper
    roi = img[y0:y1, x0:x1]
    layer = np.empty_like(roi)
    layer[:] = (222, 228, 234)
    centre, axes, angle = iris
    c = centre - (x0, y0)
    _ellipse(layer, c, axes, angle, ident.iris)
    _ellipse(layer, c, axes, angle, _shade(ident.iris, 0.55), 2)  # darker limbal ring
    _ellipse(layer, c, (axes[0] * 0.45, axes[1] * 0.45), angle, (15, 15, 15))  # pupil
    glint = c + light_xy * axes[0] * 0.45  # catch-light on the side the light comes from
    _ellipse(layer, glint, (2.2, 2.2), 0.0, (250, 250, 250))
    alpha = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(alpha, [_pts(contour - (x0, y0))], 255, cv2.LINE_AA, _SHIFT)
    a = alpha[:, :, None].astype(np.float32) / 255.0
    roi[:] = (roi * (1 - a) + layer * a).astype(np.uint8)
    return upper


def _mouth(img: np.ndarray, lm: np.ndarray, ident: Identity) -> None:
    """Inner mouth and teeth when open, then the lips over them (upper lip a shade darker)."""
    inner = catmull_rom(lm[60:68], 5, closed=True)
    gap = float(np.linalg.norm(lm[66] - lm[62]))
    if gap > 2.0:
        _fill(img, inner, (45, 35, 95))
        teeth_h = min(0.45 * gap, 11.0)
        up = catmull_rom(lm[60:65], 5)
        down = up + (lm[66] - lm[62]) / max(gap, 1e-6) * teeth_h
        _fill(img, np.vstack([up, down[::-1]]), (205, 218, 228))
    upper_lip = np.vstack([catmull_rom(lm[48:55], 5), catmull_rom(lm[[64, 63, 62, 61, 60]], 5)])
    lower_lip = np.vstack(
        [catmull_rom(lm[[54, 55, 56, 57, 58, 59, 48]], 5), catmull_rom(lm[[60, 67, 66, 65, 64]], 5)]
    )
    _fill(img, lower_lip, ident.lips)
    _fill(img, upper_lip, _shade(ident.lips, 0.85))
    _line(img, catmull_rom(lm[60:65], 5), _shade(ident.lips, 0.45), 2)


def _nose(img: np.ndarray, lm: np.ndarray, ident: Identity) -> None:
    """Nostril wings and nostrils; the nose's relief itself comes from the lighting's height field."""
    dark = _shade(ident.skin, 0.62)
    for wing, mid, tip in ((31, 32, 30), (35, 34, 30)):
        out = lm[wing] + (lm[wing] - lm[mid]) * 0.35
        rise = (lm[wing] - lm[tip]) * 0.45
        _line(
            img,
            catmull_rom(np.array([lm[wing] - rise * 0.9, out - rise * 0.2, lm[wing], lm[mid]]), 5),
            dark,
            2,
        )
        centre = (lm[wing] + lm[mid]) / 2 + (lm[tip] - lm[33]) * 0.12
        size = float(np.linalg.norm(lm[wing] - lm[mid])) * 0.45
        ang = float(np.degrees(np.arctan2(*(lm[mid] - lm[wing])[::-1])))
        _ellipse(img, centre, (size, size * 0.5), ang, (35, 35, 55))  # nostril


def _folds(img: np.ndarray, lm: np.ndarray, ident: Identity, smile: float) -> None:
    """Nasolabial folds from the nostril wings past the mouth corners; deeper with a smile."""
    tone = _shade(ident.skin, 0.9 - 0.06 * max(smile, 0.0))
    for wing, mid, corner in ((31, 32, 48), (35, 34, 54)):
        out = lm[wing] - lm[mid]
        start = lm[wing] + out * 0.6
        end = lm[corner] + (lm[corner] - lm[51]) * 0.1 + (lm[8] - lm[33]) * 0.02
        bend = (start + end) / 2 + out * 0.3
        _line(img, catmull_rom(np.array([start, bend, end]), 6)[:-3], tone, 2)


def _height_field(shape: FaceShape, ident: Identity) -> tuple[np.ndarray, np.ndarray]:
    """Low-res height map (for normals) and head coverage (to blend face light and background light)."""
    s = LOW / CROP
    head = np.zeros((LOW, LOW), np.float32)
    for name in ("skull", "hair_back", "neck", "ear_l", "ear_r", "skin", "hair"):
        if name in shape.parts:
            _fill(head, shape.parts[name], 1.0, s)
    lm = shape.landmarks
    bumps = np.zeros((LOW, LOW), np.float32)
    nose = np.vstack([lm[27] + (lm[27] - lm[33]) * 0.05, lm[31:36], lm[27]])
    nose[0] += (lm[31] - lm[35]) * 0.12
    nose[-1] += (lm[35] - lm[31]) * 0.12
    _fill(bumps, nose, 1.0, s)
    _fill(bumps, lm[48:60], 0.35, s)
    for k in (36, 42):
        _fill(
            bumps,
            np.vstack([lm[k : k + 6], lm[17 + (k - 36) // 6 * 5 : 22 + (k - 36) // 6 * 5][::-1]]),
            -0.5,
            s,
        )
    height = cv2.GaussianBlur(head, (0, 0), 5.0) * ident.face_depth * 0.9
    height += cv2.GaussianBlur(bumps, (0, 0), 2.6) * ident.nose_depth * 0.45
    return height, cv2.GaussianBlur(head, (0, 0), 1.0)


def _lighting(shape: FaceShape, ident: Identity, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel brightness (128 px): Lambert on the height field for the head, a gradient behind."""
    az, el = np.radians(scene.light_azimuth), np.radians(scene.light_elevation)
    light = np.array([np.cos(el) * np.cos(az), -np.cos(el) * np.sin(az), np.sin(el)])
    height, head = _height_field(shape, ident)
    gy, gx = np.gradient(height / (CROP / LOW))
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    lambert = np.clip((-gx * light[0] - gy * light[1] + light[2]) / norm, 0.0, 1.0)
    face = scene.ambient + scene.diffuse * lambert
    yy, xx = np.mgrid[0:LOW, 0:LOW].astype(np.float32) / LOW - 0.5
    back = 0.8 + 0.5 * (xx * light[0] + yy * light[1])
    blotch = cv2.resize(
        rng.normal(1.0, 0.03, (6, 6)).astype(np.float32), (LOW, LOW), interpolation=cv2.INTER_CUBIC
    )
    return (head * face * blotch + (1.0 - head) * back).astype(np.float32)


def render_face(ident: Identity, scene: Scene) -> RenderedFace:
    """Render one face; the same (identity, scene) always gives the same pixels."""
    rng = np.random.default_rng(scene.detail_seed)
    shape = build_face(ident, scene)
    parts, lm = shape.parts, shape.landmarks
    img = _background(rng)
    hair_rng = np.random.default_rng([scene.detail_seed, 1])
    _fill(img, catmull_rom(parts["skull"], 4, closed=True), _shade(ident.hair, 0.7))
    if "hair_back" in parts:
        _fill(img, catmull_rom(parts["hair_back"], 4, closed=True), _shade(ident.hair, 0.8))
    _fill(img, parts["neck"], _shade(ident.skin, 0.72))
    for ear in ("ear_l", "ear_r"):
        _fill(img, parts[ear], _shade(ident.skin, 0.9))
        centre = parts[ear].mean(axis=0)
        _line(img, (parts[ear] - centre) * 0.55 + centre, _shade(ident.skin, 0.65), 2, closed=True)
    skin = catmull_rom(parts["skin"], 4, closed=True)
    _fill(img, skin, ident.skin)
    _line(img, catmull_rom(lm[2:15], 4), _shade(ident.skin, 0.8), 2)  # jaw edge against the neck

    az = np.radians(scene.light_azimuth)
    light_xy = np.array([np.cos(az), -np.sin(az)])
    for k, crease in ((36, "crease_l"), (42, "crease_r")):
        upper = _eye(img, lm[k : k + 6], shape.iris[(k - 36) // 6], ident, light_xy)
        _line(img, upper, (30, 30, 40), 3)
        _line(img, catmull_rom(lm[[k + 3, k + 4, k + 5, k]], 6), _shade(ident.skin, 0.7), 1)
        _line(img, catmull_rom(parts[crease], 6), _shade(ident.skin, 0.75), 1)
    brow_color = _mix(ident.hair, (20, 20, 20), 0.35)
    for name in ("brow_l", "brow_r"):
        _fill(img, catmull_rom(parts[name], 3, closed=True), brow_color)
    _nose(img, lm, ident)
    _folds(img, lm, ident, scene.smile)
    _mouth(img, lm, ident)
    _hair(img, parts["hair"], ident.hair, hair_rng, outer_n=17)

    mask = np.zeros((CROP, CROP), np.uint8)
    _fill(mask, skin, 1, aa=False)
    _fill(mask, catmull_rom(parts["hair"], 4, closed=True), 0, aa=False)

    # light, white balance and exposure folded into one multiplier, upsampled once; then grain.
    t = scene.temperature * 0.12
    tint = np.array([1.0 - t, 1.0, 1.0 + t * 0.8], np.float32) * scene.exposure
    light = _lighting(shape, ident, scene, rng)[:, :, None] * tint
    light = cv2.resize(light, (CROP, CROP), interpolation=cv2.INTER_LINEAR)
    ox, oy = (int(v) for v in rng.integers(0, 64, 2))
    out = cv2.multiply(img, light, dtype=cv2.CV_32F)
    cv2.add(out, _noise_tile()[oy : oy + CROP, ox : ox + CROP], dst=out)
    image = cv2.convertScaleAbs(out)  # saturating cast; grain never pushes a pixel far below 0
    return RenderedFace(image=image, landmarks=lm, mask=mask)
