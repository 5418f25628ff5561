"""Tiny facesets for the index, loader, batch and benchmark tests (no tests in this module).

Each face is one of DeepFaceLab's own fixture files (real APP15 metadata: landmarks, XSeg masks)
with its pixels tinted and numbered per copy, so every file decodes to different pixels while its
metadata stays byte-identical to what DeepFaceLab wrote.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from torchsae.dfl.jpeg import read_app15, replace_app15

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
DFL_FACES = sorted(p for p in FIXTURES.glob("dfl_*.jpg"))
PLAIN_FACE = FIXTURES / "plain_09_no_metadata.jpg"


def face_bytes(number: int, size: int = 128, source: Path | None = None) -> bytes:
    """A distinct JPEG (``size``²) carrying the metadata of a DFL fixture face."""
    source = source or DFL_FACES[number % len(DFL_FACES)]
    data = source.read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    tint = np.array([(37 * number) % 60, (23 * number) % 60, (11 * number) % 60], np.int16)
    image = np.clip(image.astype(np.int16) + tint - 30, 0, 255).astype(np.uint8)
    cv2.putText(image, str(number), (40, 120), cv2.FONT_HERSHEY_SIMPLEX, 3.0, (255, 255, 255), 6)
    if size != image.shape[0]:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    payload = read_app15(data, str(source))
    jpeg = encoded.tobytes()
    if payload is None:
        return jpeg
    if size != 512:  # landmarks are in pixels of the 512² crop; scale them with the image
        from torchsae.dfl.meta import DFLMeta
        from torchsae.dfl.unpickle import compat_dumps, restricted_loads

        meta = DFLMeta.from_dict(restricted_loads(payload, str(source)), str(source))
        meta.landmarks = meta.landmarks * (size / 512.0)
        payload = compat_dumps(meta.to_dict())
    return replace_app15(jpeg, payload, "test face")


def make_faceset(folder: Path, count: int, size: int = 128) -> list[Path]:
    """Write ``count`` distinct DFL faces ``face_000.jpg`` ... into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"face_{number:03d}.jpg"
        path.write_bytes(face_bytes(number, size))
        paths.append(path)
    return paths


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
