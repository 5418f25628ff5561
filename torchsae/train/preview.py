"""Preview grids and loss-curve images, drawn with OpenCV (no plotting library needed).

Why these columns: they answer the questions one asks while training, left to right: is the mask
right (overlay), does each side reconstruct itself (A→A, B→B), and what does the swap look like (A→B,
DeepFaceLab's ``pred_src_dst``). The last two columns overlay the masks the model *predicts* on A: its
A→A mask (DeepFaceLab's ``pred_dst_dstm``) and the swap's mask (``pred_src_dstm``), the two masks a
``.dfm`` outputs; comparing them with the dataset mask of column 2 shows how far the mask heads have
learnt. Rows are a fixed set of unwarped targets chosen at the start, so
successive previews are comparable (spec §8). Images stay BGR until the PNG, as in DeepFaceLab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from torchsae.fileio import atomic_write_bytes

COLUMNS = (
    "A_original",
    "A_xseg_mask_overlay",
    "A_recon",
    "B_original",
    "B_xseg_mask_overlay",
    "B_recon",
    "A_to_B",
    "A_pred_mask",
    "A_to_B_mask",
)
MIN_ROWS = 4
_OVERLAY_BGR = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)  # red, shown where the mask is on
_CURVE_COLOURS = [(255, 128, 0), (0, 140, 255), (60, 180, 60), (200, 60, 200), (0, 200, 200)]


def mask_overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Tint ``image`` (N,3,H,W) red by ``alpha·mask`` (N,1,H,W); both in [0, 1]."""
    weight = alpha * mask.clamp(0, 1)
    return image * (1 - weight) + _OVERLAY_BGR.to(image) * weight


@torch.no_grad()
def preview_columns(model: torch.nn.Module, samples: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run ``model`` on the unwarped targets and return the ``COLUMNS``, each (N,3,H,W) on the CPU.

    ``samples`` holds ``target_a, mask_a, target_b, mask_b`` (masks are the dataset's XSeg/hull masks).
    """
    was_training = model.training
    model.eval()
    try:
        out = model(samples["target_a"], samples["target_b"])
    finally:
        model.train(was_training)
    a, b = samples["target_a"].float(), samples["target_b"].float()
    columns = [
        a,
        mask_overlay(a, samples["mask_a"].float()),
        out["pred_aa"].float(),
        b,
        mask_overlay(b, samples["mask_b"].float()),
        out["pred_bb"].float(),
        out["swap_ab"].float(),
        mask_overlay(a, out["pred_aa_mask"].float()),
        mask_overlay(a, out["swap_ab_mask"].float()),
    ]
    return [c.detach().clamp(0, 1).cpu() for c in columns]


def _header(labels: Sequence[str], cell: int) -> np.ndarray:
    """A white strip with each label centred over its column, scaled to fit the cell width."""
    height = max(18, cell // 6)
    strip = np.full((height, cell * len(labels), 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, label in enumerate(labels):
        scale = 0.5
        (w, h), _ = cv2.getTextSize(label, font, scale, 1)
        scale = min(scale * (cell - 4) / max(w, 1), height / max(h, 1) * 0.3, 0.6)
        (w, h), _ = cv2.getTextSize(label, font, scale, 1)
        origin = (i * cell + (cell - w) // 2, (height + h) // 2)
        cv2.putText(strip, label, origin, font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def compose_grid(
    columns: Sequence[torch.Tensor], labels: Sequence[str] = COLUMNS, min_cell: int = 128
) -> np.ndarray:
    """Tile (N,3,H,W) BGR [0,1] columns into one HxWx3 uint8 BGR image under a labelled header.

    Cells smaller than ``min_cell`` pixels are enlarged by an integer factor (nearest neighbour, so
    pixels stay pixels) to keep the labels readable at small training resolutions.
    """
    if len(columns) != len(labels):
        raise ValueError(f"{len(columns)} columns but {len(labels)} labels")
    rows = [torch.cat(list(row), dim=2) for row in zip(*[c.unbind(0) for c in columns], strict=True)]
    body = torch.cat(rows, dim=1)  # (3, N*H, columns*W)
    image = (body.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    cell = columns[0].shape[-1]
    factor = max(1, math.ceil(min_cell / cell))
    if factor > 1:
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    return np.concatenate([_header(labels, cell * factor), image], axis=0)


def loss_curve_image(
    history: Mapping[str, Sequence[tuple[int, float]]], width: int = 640, height: int = 240
) -> np.ndarray:
    """Loss curves over steps as an HxWx3 uint8 BGR image (log10 axis when every value is positive)."""
    image = np.full((height, width, 3), 255, np.uint8)
    series = {name: [(s, v) for s, v in pts if math.isfinite(v)] for name, pts in history.items()}
    series = {name: pts for name, pts in series.items() if pts}
    font = cv2.FONT_HERSHEY_SIMPLEX
    if not series:
        cv2.putText(image, "no losses yet", (10, height // 2), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        return image
    values = [v for pts in series.values() for _, v in pts]
    steps = [s for pts in series.values() for s, _ in pts]
    use_log = min(values) > 0
    ys = np.log10(values) if use_log else np.asarray(values)
    lo, hi = float(np.min(ys)), float(np.max(ys))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = min(steps), max(max(steps), min(steps) + 1)
    left, right, top, bottom = 60, width - 10, 24, height - 24
    cv2.rectangle(image, (left, top), (right, bottom), (200, 200, 200), 1)

    def to_px(step: float, value: float) -> tuple[int, int]:
        y = math.log10(value) if use_log else value
        px = left + (step - s0) / (s1 - s0) * (right - left)
        py = bottom - (y - lo) / (hi - lo) * (bottom - top)
        return int(round(px)), int(round(py))

    for i, (name, pts) in enumerate(sorted(series.items())):
        colour = _CURVE_COLOURS[i % len(_CURVE_COLOURS)]
        poly = np.array([to_px(s, v) for s, v in pts], np.int32).reshape(-1, 1, 2)
        cv2.polylines(image, [poly], False, colour, 1, cv2.LINE_AA)
        cv2.putText(
            image, f"{name} {pts[-1][1]:.4f}", (left + 5 + 150 * i, 16), font, 0.4, colour, 1, cv2.LINE_AA
        )
    fmt = (lambda y: f"{10**y:.3g}") if use_log else (lambda y: f"{y:.3g}")
    cv2.putText(image, fmt(hi), (2, top + 8), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, fmt(lo), (2, bottom), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, f"step {s0}", (left, height - 6), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    label = f"step {s1}"
    (w, _), _ = cv2.getTextSize(label, font, 0.35, 1)
    cv2.putText(image, label, (right - w, height - 6), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def preview_path(previews_dir: Path, step: int) -> Path:
    """``logs/previews/step_XXXXXXXX.png`` (at least eight digits, as the checkpoints' copies, so names
    sort by step up to 99,999,999)."""
    return Path(previews_dir) / f"step_{step:08d}.png"


def write_png(path: Path, bgr: np.ndarray) -> None:
    """Encode a BGR uint8 image as PNG and write it atomically."""
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the preview")
    atomic_write_bytes(path, data.tobytes())
