"""The swap score: how close a model's A→B swap comes to the ground truth, inside the face mask.

Why this measures a face swap: the demo faceset's ``truth/`` folder holds held-out scenes rendered
once as identity A and once as identity B (same pose, expression, light, background). Feeding the A
render through the model's swap (DeepFaceLab's ``pred_src_dst``) should give the B render. PSNR and
SSIM are taken only where both renders are face (``NNNN_mask.png``), since background and hair are
not the swap's job. The untrained model and "no swap at all" (A's face itself) are the baselines.

PSNR: ``10·log10(1 / MSE)`` of each sample over its masked pixels and three channels, averaged over
samples. SSIM: Wang et al.'s SSIM map (11-tap Gaussian window, σ 1.5, population covariances, the
same constants as the loss) on the valid region, averaged per sample over masked positions, then over
samples; this equals scikit-image's ``structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, full=True)`` map averaged the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipelines.decode import decode_bgr
from torchsae.errors import TorchSAEError
from torchsae.losses.filters import separable_filter, ssim_window_1d

SSIM_WINDOW = 11


@dataclass(frozen=True)
class SwapScore:
    psnr: float
    ssim: float
    samples: int

    def __str__(self) -> str:
        return f"PSNR {self.psnr:6.2f} dB   SSIM {self.ssim:.4f}   ({self.samples} pairs)"


def load_truth(truth_dir: str | Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A faces, B faces (N,3,R,R BGR [0,1]) and masks (N,1,R,R [0,1]) of the truth pairs at ``resolution``.

    Images go through the training pipeline's decoder (DCT-scaled decode + cubic resize), so the model
    sees them exactly as it saw its training faces; masks are resized with linear interpolation.
    """
    truth_dir = Path(truth_dir)
    items = _read_manifest(truth_dir / "manifest.json", "truth")["items"]
    faces_a, faces_b, masks = [], [], []
    for item in items:
        faces_a.append(_decode(truth_dir / item["a"], resolution))
        faces_b.append(_decode(truth_dir / item["b"], resolution))
        mask = _read_mask(truth_dir / item["mask"])
        masks.append(cv2.resize(mask, (resolution, resolution), interpolation=cv2.INTER_LINEAR))
    return _images(faces_a), _images(faces_b), _masks(masks)


def _read_manifest(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not data["items"]:
            raise TorchSAEError(f"{path}: holds no truth items")
        return data
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TorchSAEError(f"{path}: not a demo {what} manifest ({exc})") from exc


def _decode(path: Path, resolution: int) -> np.ndarray:
    try:
        return decode_bgr(path.read_bytes(), resolution)
    except (OSError, ValueError) as exc:
        raise TorchSAEError(f"{path}: unreadable truth image ({exc})") from exc


def _read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise TorchSAEError(f"{path}: unreadable truth mask")
    return mask


def truth_pairs(root: str | Path) -> list[tuple[str, str]]:
    """Every ordered (X, Y) identity pair of a demo faceset folder that has swap truth."""
    root = Path(root)
    ids = root / "truth_ids" / "manifest.json"
    if ids.is_file():
        names = list(_read_manifest(ids, "truth_ids")["identities"])
        return [(x, y) for x in names for y in names if x != y]
    names = [
        v["name"] for v in _read_manifest(root / "truth" / "manifest.json", "truth")["identities"].values()
    ]
    return [(names[0], names[1]), (names[1], names[0])]


def load_pair_truth(
    root: str | Path, source: str, target: str, resolution: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``source`` faces, ``target`` faces (the same held-out scenes) and their masks for the X->Y swap.

    ``root`` is a ``torchsae demo make`` folder: made with more than two identities, the pair comes from
    ``truth_ids/`` (mask = face in both renders); made with two, from ``truth/`` (either direction).
    Images and masks are prepared as :func:`load_truth` does.
    """
    root = Path(root)
    if source == target:
        raise TorchSAEError(f"swap {source}->{target}: source and target must differ")
    ids = root / "truth_ids"
    if (ids / "manifest.json").is_file():
        manifest = _read_manifest(ids / "manifest.json", "truth_ids")
        for name in (source, target):
            if name not in manifest["identities"]:
                raise TorchSAEError(f"{ids}: no identity {name!r} (has {', '.join(manifest['identities'])})")
        faces_x, faces_y, masks = [], [], []
        for item in manifest["items"]:
            faces_x.append(_decode(ids / source / item["image"], resolution))
            faces_y.append(_decode(ids / target / item["image"], resolution))
            both = np.minimum(
                _read_mask(ids / source / item["mask"]), _read_mask(ids / target / item["mask"])
            )
            masks.append(cv2.resize(both, (resolution, resolution), interpolation=cv2.INTER_LINEAR))
        return _images(faces_x), _images(faces_y), _masks(masks)
    pair = tuple(
        v["name"] for v in _read_manifest(root / "truth" / "manifest.json", "truth")["identities"].values()
    )
    faces_a, faces_b, masks = load_truth(root / "truth", resolution)
    if (source, target) == pair:
        return faces_a, faces_b, masks
    if (target, source) == pair:
        return faces_b, faces_a, masks
    raise TorchSAEError(f"{root}: no truth for {source}->{target} (identities {pair[0]}, {pair[1]})")


def pair_swap_score(
    swap: Callable[[torch.Tensor], torch.Tensor],
    root: str | Path,
    source: str,
    target: str,
    resolution: int,
    batch_size: int = 16,
) -> SwapScore:
    """Score ``swap`` (N,3,R,R BGR [0,1] faces of ``source`` -> the same faces as ``target``) on the truth."""
    faces_x, faces_y, masks = load_pair_truth(root, source, target, resolution)
    with torch.no_grad():
        swapped = torch.cat([swap(chunk).float().cpu() for chunk in faces_x.split(batch_size)])
    return score_images(swapped.clamp(0, 1), faces_y, masks)


def no_swap_pair_score(root: str | Path, source: str, target: str, resolution: int) -> SwapScore:
    """The X->Y floor: the source's own face scored against the target's."""
    faces_x, faces_y, masks = load_pair_truth(root, source, target, resolution)
    return score_images(faces_x, faces_y, masks)


def _images(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def _masks(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).float().unsqueeze(1) / 255.0


def masked_psnr(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over samples of the PSNR (peak 1.0) over each sample's masked pixels."""
    weight = mask.expand_as(truth).float()
    mse = ((pred.float() - truth.float()) ** 2 * weight).sum(dim=(1, 2, 3)) / weight.sum(
        dim=(1, 2, 3)
    ).clamp_min(1e-8)
    return float((10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean())


def ssim_map(a: torch.Tensor, b: torch.Tensor, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """The per-pixel SSIM map of NCHW images in [0,1] on the valid region, averaged over channels."""
    channels = a.shape[1]
    taps = ssim_window_1d(SSIM_WINDOW, 1.5)
    moments = separable_filter(torch.cat([a, b, a * a, b * b, a * b], dim=1).float(), taps, padding=0)
    mu_a, mu_b, e_aa, e_bb, e_ab = moments.split(channels, dim=1)
    c1, c2 = k1**2, k2**2
    num = (2 * mu_a * mu_b + c1) * (2 * (e_ab - mu_a * mu_b) + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (e_aa - mu_a**2 + e_bb - mu_b**2 + c2)
    return (num / den).mean(dim=1, keepdim=True)


def masked_ssim(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over samples of the SSIM map averaged over each sample's masked (valid) positions."""
    pad = (SSIM_WINDOW - 1) // 2
    smap = ssim_map(pred, truth)
    weight = mask[..., pad:-pad, pad:-pad].float()
    per_sample = (smap * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    return float(per_sample.mean())


def score_images(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> SwapScore:
    return SwapScore(masked_psnr(pred, truth, mask), masked_ssim(pred, truth, mask), int(pred.shape[0]))


@torch.no_grad()
def swap_score(model: torch.nn.Module, truth_dir: str | Path, batch_size: int = 16) -> SwapScore:
    """Score ``model.swap`` (A in, B out) against the truth pairs at the model's resolution."""
    resolution = model.config.resolution
    device = next(model.parameters()).device
    faces_a, faces_b, masks = load_truth(truth_dir, resolution)
    was_training = model.training
    model.eval()
    try:
        swapped = torch.cat(
            [model.swap(chunk.to(device))[0].float().cpu() for chunk in faces_a.split(batch_size)]
        )
    finally:
        model.train(was_training)
    return score_images(swapped.clamp(0, 1), faces_b, masks)


def no_swap_score(truth_dir: str | Path, resolution: int) -> SwapScore:
    """The score of doing nothing: A's own face against B's (the floor a swap must beat)."""
    faces_a, faces_b, masks = load_truth(truth_dir, resolution)
    return score_images(faces_a, faces_b, masks)


def format_scores(rows: dict[str, SwapScore]) -> str:
    """An aligned text table, one line per labelled score."""
    width = max(len(label) for label in rows)
    lines = [f"{'swap A->B vs truth':<{width}}   PSNR (dB, masked)   SSIM (masked)"]
    for label, score in rows.items():
        psnr = "inf" if math.isinf(score.psnr) else f"{score.psnr:.2f}"
        lines.append(f"{label:<{width}}   {psnr:>17}   {score.ssim:>13.4f}")
    return "\n".join(lines)


def load_frame_truth(frames_truth_dir: str | Path) -> list[dict]:
    """The items of a demo ``frames_truth/manifest.json`` (see ``torchsae.demo.frames``)."""
    manifest = Path(frames_truth_dir) / "manifest.json"
    try:
        return json.loads(manifest.read_text())["items"]
    except (OSError, ValueError, KeyError) as exc:
        raise TorchSAEError(f"{manifest}: not a demo frames manifest ({exc})") from exc


def merged_frames_score(merged_dir: str | Path, frames_truth_dir: str | Path) -> SwapScore:
    """Merged frames against the truth frames (the same scenes rendered as B), inside the truth mask.

    Only frames that hold a face count; PSNR and SSIM as :func:`score_images`, at full frame size.
    """
    merged_dir, truth_dir = Path(merged_dir), Path(frames_truth_dir)
    preds, truths, masks = [], [], []
    for item in load_frame_truth(truth_dir):
        if not item["faces"]:
            continue
        images = []
        for path in (merged_dir / item["frame"], truth_dir / item["frame"]):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise TorchSAEError(f"{path}: missing or unreadable frame")
            images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
        mask = cv2.imread(str(truth_dir / item["mask"]), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise TorchSAEError(f"{truth_dir / item['mask']}: unreadable truth mask")
        preds.append(images[0])
        truths.append(images[1])
        masks.append(torch.from_numpy(mask).float()[None] / 255.0)
    if not preds:
        raise TorchSAEError(f"{truth_dir}: no frame with a face to score")
    return score_images(torch.stack(preds), torch.stack(truths), torch.stack(masks))
