"""Checking an exported graph against PyTorch with ONNX Runtime, and loading faces to check with.

Why verify every export: an ONNX graph can load and run yet compute something else (a wrong
depth-to-space order, a transposed flatten, a lost dynamic axis). Comparing ONNX Runtime's outputs
with the PyTorch model's, on random inputs and on real faces, at more than one batch size, catches
all of these before a file reaches the user.

Tolerances (max abs difference on outputs in [0, 1]):
* fp32 graphs: ``FP32_TOLERANCE`` = 1e-4 against the PyTorch float32 model.
* fp16 graphs: ``FP16_TOLERANCE`` = 1e-2 against the PyTorch float32 model (1e-2 is 2.5 levels
  of an 8-bit image; fp16 rounding of weights and activations stays well inside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchsae.export.errors import ExportError, VerificationError
from torchsae.export.layouts import LAYOUTS
from torchsae.export.session import cpu_cores, make_session  # noqa: F401  (re-exported)

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def tolerance_for(dtype: str) -> float:
    """The max-abs-difference bound an export of ``dtype`` ('fp32' or 'fp16') must meet."""
    return FP16_TOLERANCE if dtype == "fp16" else FP32_TOLERANCE


def load_faces(directory: str | Path, resolution: int, limit: int = 8) -> np.ndarray:
    """Up to ``limit`` aligned faces from a faceset folder as (N, R, R, 3) float32 BGR in [0, 1]."""
    import cv2

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: verification faces folder does not exist")
    faces = []
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        faces.append(resize_faces(image[None].astype(np.float32) / 255.0, resolution)[0])
        if len(faces) == limit:
            break
    if not faces:
        raise ExportError(f"{directory}: no readable .jpg/.png faces to verify the export with")
    return np.stack(faces)


def resize_faces(faces: np.ndarray, resolution: int) -> np.ndarray:
    """Resize (N, H, W, 3) float faces to (N, R, R, 3) float32 (area filter when shrinking)."""
    import cv2

    out = []
    for face in np.asarray(faces, dtype=np.float32):
        if face.shape[:2] != (resolution, resolution):
            shrink = face.shape[0] > resolution
            face = cv2.resize(
                face, (resolution, resolution), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
        out.append(np.clip(face, 0.0, 1.0))
    return np.stack(out).astype(np.float32)


@dataclass
class VerifyReport:
    """Max abs differences per input set and output, and the bound they were held to."""

    tolerance: float
    diffs: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def max_diff(self) -> float:
        return max((d for per_set in self.diffs.values() for d in per_set.values()), default=0.0)

    def summary(self) -> str:
        """One line per input set, e.g. ``random_b3: max |diff| 3.0e-07``."""
        return "\n".join(f"{name}: max |diff| {max(per.values()):.2e}" for name, per in self.diffs.items())


def verification_inputs(resolution: int, faces: np.ndarray | None, seed: int = 0) -> dict[str, np.ndarray]:
    """The NHWC input sets every export is checked on: random batches of 3 and 1, then real faces."""
    rng = np.random.default_rng(seed)
    sets = {
        "random_b3": rng.random((3, resolution, resolution, 3), dtype=np.float32),
        "random_b1": rng.random((1, resolution, resolution, 3), dtype=np.float32),
    }
    if faces is not None and len(faces):
        sets[f"faces_b{len(faces)}"] = resize_faces(faces, resolution)
    return sets


def compare_outputs(
    got: list[np.ndarray], want: list[np.ndarray], names: tuple[str, ...], tolerance: float, label: str
) -> dict[str, float]:
    """Max abs difference per output; raises VerificationError on a shape or value mismatch."""
    diffs: dict[str, float] = {}
    for name, g, w in zip(names, got, want, strict=True):
        if g.shape != w.shape:
            raise VerificationError(f"{label}: output {name!r} has shape {g.shape}, PyTorch gives {w.shape}")
        diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
        if not np.isfinite(diff) or diff > tolerance:
            raise VerificationError(
                f"{label}: output {name!r} differs from PyTorch by {diff:.3e} (tolerance {tolerance:.0e})"
            )
        diffs[name] = diff
    return diffs


def verify_onnx(
    onnx_model: str | Path | bytes,
    reference: nn.Module,
    layout: str,
    resolution: int,
    dtype: str = "fp32",
    faces: np.ndarray | None = None,
    label: str = "export",
) -> VerifyReport:
    """Run the graph in ONNX Runtime (CPU) and the float32 PyTorch ``reference`` on the same inputs.

    ``reference`` is the layout wrapper (``SwapGraph``) around the float32 model; ``faces`` are extra
    real faces (N, H, W, 3) BGR in [0, 1], resized to ``resolution``. Also checks the graph's input
    and output names against the layout. Raises VerificationError on any disagreement.
    """
    spec = LAYOUTS[layout]
    session = make_session(onnx_model)
    in_names = [i.name for i in session.get_inputs()]
    out_names = tuple(o.name for o in session.get_outputs())
    if in_names != [spec.input_name] or out_names != spec.output_names:
        raise VerificationError(
            f"{label}: graph names {in_names} -> {list(out_names)} do not match layout {layout!r} "
            f"({spec.input_name} -> {list(spec.output_names)})"
        )
    sets = {
        name: spec.to_input(faces_nhwc) for name, faces_nhwc in verification_inputs(resolution, faces).items()
    }
    return verify_session(session, reference, spec.input_name, sets, tolerance_for(dtype), label)


def verify_session(
    session, reference: nn.Module, input_name: str, sets: dict[str, np.ndarray], tolerance: float, label: str
) -> VerifyReport:
    """Feed each input set to ``session`` (as ``input_name``) and to ``reference``; compare every output."""
    out_names = tuple(o.name for o in session.get_outputs())
    report = VerifyReport(tolerance)
    reference = reference.eval()
    for set_name, feed in sets.items():
        got = session.run(None, {input_name: feed})
        with torch.no_grad():
            want = [t.detach().cpu().float().numpy() for t in reference(torch.from_numpy(feed))]
        report.diffs[set_name] = compare_outputs(
            got, want, out_names, report.tolerance, f"{label} [{set_name}]"
        )
    return report
