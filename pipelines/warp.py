"""DeepFaceLab's random geometry (spec §5 ``gen_warp_params`` / ``warp_by_params``) as batched torch.

DeepFaceLab warps each sample with three OpenCV calls: ``remap`` through a random control-point grid
(the "random warp"), ``warpAffine`` with a random rotation/scale/shift, then a horizontal flip. Here
the three are composed analytically into ONE sampling grid per sample, so a whole batch of images is
resampled with a single ``grid_sample`` call per tensor group, on whatever device the batch lives on,
and the image and its masks share the draw exactly.

Two facts about DeepFaceLab's grid that the fixtures (``tests/fixtures/dfl/warp_params``) pin down and
that a plain reading of the spec misses:

* ``cv2.resize`` (INTER_LINEAR, half-pixel centres) of the control grid to ``w + cell`` followed by the
  ``cell/2`` crop places output pixel ``i`` at control coordinate ``(i + 0.5) / cell``, so the
  undisturbed map is ``i + 0.5``: DFL's warped image is shifted by half a pixel.  We therefore evaluate
  the map in closed form (bilinear interpolation of the control displacements at that coordinate)
  instead of resizing and cropping; it equals OpenCV's map to float32 rounding.
* DFL builds ``mapy`` as a transposed *view* of ``mapx`` before adding the random displacements, so
  both draws land in the same array: ``dx = (n1 + n2ᵀ)·0.24·cell`` and ``dy = dxᵀ`` (each ``n`` a
  normal truncated to ±2.5 and divided by 2.5).  The displacement bound is thus ``2·0.24·cell``.
  ``sample_warp_params`` reproduces this; ``WarpParams`` itself accepts any control displacements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROTATION_RANGE = (-10.0, 10.0)  # degrees
SCALE_RANGE = (1.0 / 1.15, 1.15)  # DFL: uniform(1 / (1 - (-0.15)), 1 + 0.15)
SHIFT_RANGE = (-0.05, 0.05)  # fraction of w
FLIP_PROBABILITY = 0.4  # DFL: randint(10) < 4
WARP_AMPLITUDE = 0.24  # control-point displacement per truncated normal, in cells
TRUNCATION = 2.5
MAX_CONTROL = 9  # w / (w/8) + 1: the finest grid; coarser grids use its top-left corner
MIN_WORK_RES = 64  # DFL augments at >= 64 px and resizes back


@dataclass
class WarpParams:
    """One random geometric draw per sample, as tensors (CPU or device).

    ``rotation`` degrees, ``scale``, ``tx``/``ty`` as fractions of ``resolution``, ``flip`` bool,
    ``cell`` the warp-grid cell in pixels, ``disp`` the control-point displacements in pixels,
    ``[n, 2, 9, 9]`` (channel 0 moves x, channel 1 moves y; row index is y), of which the top-left
    ``(resolution // cell + 1)²`` block is used.
    """

    resolution: int
    rotation: torch.Tensor
    scale: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    flip: torch.Tensor
    cell: torch.Tensor
    disp: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.rotation.shape[0])

    @classmethod
    def identity(cls, n: int, resolution: int) -> WarpParams:
        """No rotation, unit scale, no shift, no flip, no grid displacement."""
        zeros = torch.zeros(n, dtype=torch.float64)
        return cls(
            resolution=resolution,
            rotation=zeros.clone(),
            scale=torch.ones(n, dtype=torch.float64),
            tx=zeros.clone(),
            ty=zeros.clone(),
            flip=torch.zeros(n, dtype=torch.bool),
            cell=torch.full((n,), max(resolution // 2, 1), dtype=torch.int64),
            disp=torch.zeros(n, 2, MAX_CONTROL, MAX_CONTROL, dtype=torch.float64),
        )

    def affine_matrix(self) -> torch.Tensor:
        """``cv2.getRotationMatrix2D((w//2, w//2), rot, scale)`` plus ``(tx·w, ty·w)``: [n, 2, 3] float64."""
        w = self.resolution
        centre = float(w // 2)
        angle = self.rotation.double() * (math.pi / 180.0)
        alpha = self.scale.double() * torch.cos(angle)
        beta = self.scale.double() * torch.sin(angle)
        row0 = torch.stack([alpha, beta, (1 - alpha) * centre - beta * centre + self.tx.double() * w], -1)
        row1 = torch.stack([-beta, alpha, beta * centre + (1 - alpha) * centre + self.ty.double() * w], -1)
        return torch.stack([row0, row1], 1)


def _truncated_normal(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard normal draws rejected outside ±2.5, divided by 2.5 (values in [-1, 1])."""
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    bad = values.abs() > TRUNCATION
    while bool(bad.any()):
        fresh = torch.randn(shape, generator=generator, dtype=torch.float64)
        values = torch.where(bad, fresh, values)
        bad = values.abs() > TRUNCATION
    return values / TRUNCATION


def dfl_control_displacements(
    n1: torch.Tensor, n2: torch.Tensor, cell: torch.Tensor, resolution: int
) -> torch.Tensor:
    """DFL's aliased control displacements from two [n, 7, 7] truncated-normal draws.

    For a sample with ``c = w // cell + 1`` control points per axis, its interior ``(c-2)²`` points use
    the top-left block of ``n1``/``n2``: ``dx = (n1 + n2ᵀ)·0.24·cell`` and ``dy = dxᵀ``; the border
    control points stay fixed. Returns ``[n, 2, 9, 9]`` float64.
    """
    n = n1.shape[0]
    inner = MAX_CONTROL - 2
    a = torch.zeros(n, MAX_CONTROL, MAX_CONTROL, dtype=torch.float64, device=n1.device)
    b = torch.zeros_like(a)
    a[:, 1 : 1 + inner, 1 : 1 + inner] = n1.double()
    b[:, 1 : 1 + inner, 1 : 1 + inner] = n2.double()
    count = resolution // cell + 1  # [n]
    idx = torch.arange(MAX_CONTROL, device=n1.device)
    inside = (idx >= 1)[None, :] & (idx[None, :] <= (count - 2)[:, None])  # [n, 9]
    interior = inside[:, :, None] & inside[:, None, :]
    dx = (a + b.transpose(1, 2)) * (WARP_AMPLITUDE * cell.double())[:, None, None] * interior
    return torch.stack([dx, dx.transpose(1, 2)], 1)


def sample_warp_params(
    n: int, resolution: int, generator: torch.Generator, *, flip: bool = True
) -> WarpParams:
    """Draw ``n`` independent geometric augmentations with SAEHD's ranges (spec §5), on the CPU.

    Resolutions below 64 are drawn at 64, as DeepFaceLab does (``pipelines.augment.apply_geometry``
    resizes the batch around it). The grid is drawn even when the caller will not apply the warp, so
    switching random_warp off leaves every other draw unchanged.
    """
    w = max(resolution, MIN_WORK_RES)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    rotation = uniform(*ROTATION_RANGE)
    scale = uniform(*SCALE_RANGE)
    tx = uniform(*SHIFT_RANGE)
    ty = uniform(*SHIFT_RANGE)
    flips = torch.rand(n, generator=generator, dtype=torch.float64) < FLIP_PROBABILITY
    flips &= bool(flip)
    cell = w // (2 ** (1 + torch.randint(0, 3, (n,), generator=generator)))
    inner = MAX_CONTROL - 2
    n1 = _truncated_normal((n, inner, inner), generator)
    n2 = _truncated_normal((n, inner, inner), generator)
    disp = dfl_control_displacements(n1, n2, cell, w)
    return WarpParams(w, rotation, scale, tx, ty, flips, cell, disp)


def control_grid(params: WarpParams) -> torch.Tensor:
    """DFL's control grid in pixels, [n, 9, 9, 2] float64 (x, y): ``linspace(0, w, c)`` plus ``disp``.

    Only the top-left ``c = w // cell + 1`` points per axis belong to a sample. Resized by
    ``cv2.resize`` (linear) to ``w + cell`` and cropped by ``cell/2``, the grid is DFL's ``mapx,
    mapy`` (the OpenCV sampler in ``pipelines.cpu_sampler`` builds its maps this way; ``warp_maps``
    is the same map in closed form).
    """
    idx = torch.arange(MAX_CONTROL, dtype=torch.float64, device=params.disp.device)
    step = params.cell.to(torch.float64)[:, None] * idx  # linspace(0, w, c) = cell · index
    base = torch.stack(
        [step[:, None, :].expand(-1, MAX_CONTROL, -1), step[:, :, None].expand(-1, -1, MAX_CONTROL)], -1
    )
    return base + params.disp.permute(0, 2, 3, 1)


def _remap_source(params: WarpParams, qn: torch.Tensor) -> torch.Tensor:
    """DFL's remap source points, normalised, at normalised positions ``qn`` [n, H, W, 2] (x, y).

    In pixels map(q) = q + 0.5 + bilinear(disp, (q + 0.5) / cell), the closed form of DFL's
    resize-and-crop. With q = ((qn + 1)·w − 1)/2 the control coordinate (q + 0.5)/cell becomes
    (qn + 1)·w/(2·cell), and align_corners=True maps control indices 0..8 onto −1..1, so
    control = (qn + 1)·k − 1 with k = w/(8·cell); the half-pixel shift is +1/w normalised.
    """
    w = params.resolution
    k = (w / ((MAX_CONTROL - 1) * params.cell.to(device=qn.device, dtype=qn.dtype)))[:, None, None, None]
    control = torch.addcmul(k - 1.0, qn, k)
    disp = (params.disp * (2.0 / w)).to(device=qn.device, dtype=qn.dtype)
    offset = F.grid_sample(disp, control, mode="bilinear", padding_mode="border", align_corners=True)
    return (qn + offset.permute(0, 2, 3, 1)).add_(1.0 / w)


def _to_normalised(w: int) -> torch.Tensor:
    """3×3 map from pixel (x, y, 1) to grid_sample's align_corners=False coordinates (2x + 1)/w − 1."""
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / w, 1.0 / w - 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def warp_maps(params: WarpParams, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-pixel ``mapx, mapy`` ([n, w, w]) DFL feeds to ``cv2.remap``, for checking the grid."""
    w = params.resolution
    pix = (torch.arange(w, dtype=dtype, device=params.disp.device) * 2.0 + 1.0) / w - 1.0
    qy, qx = torch.meshgrid(pix, pix, indexing="ij")
    qn = torch.stack([qx, qy], -1).expand(params.n, w, w, 2)
    maps = (_remap_source(params, qn) + 1.0) * (w / 2.0) - 0.5
    return maps[..., 0], maps[..., 1]


def output_to_input(params: WarpParams) -> torch.Tensor:
    """[n, 2, 3] float64: output pixel (x, y, 1) → the point q that ``warpAffine`` reads, flip included.

    ``warpAffine`` without WARP_INVERSE_MAP inverts the matrix: q = A⁻¹(p − b); the flip, applied last
    by DFL, mirrors p first: p ↦ (w − 1 − x, y).
    """
    w = params.resolution
    mat = params.affine_matrix().cpu()
    a, b, c, d = mat[:, 0, 0], mat[:, 0, 1], mat[:, 1, 0], mat[:, 1, 1]
    inv = (
        torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], 1) / (a * d - b * c)[:, None, None]
    )
    to_input = torch.cat([inv, -(inv @ mat[:, :, 2:])], 2)
    mirror = torch.tensor([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return torch.where(params.flip.cpu()[:, None, None], to_input @ mirror, to_input)


def sampling_grids(
    params: WarpParams, *, warp: bool, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Compose warp → affine → flip into ``grid_sample`` grids (align_corners=False), [n, w, w, 2].

    Returns ``(warped_grid, target_grid)``; ``warped_grid`` is None when ``warp`` is False. The target
    samples the source at q (see ``output_to_input``), one ``affine_grid`` call for the batch; the
    warped image samples at map(clamp(q)), the clamp standing in for warpAffine's replicate border on
    DFL's intermediate remapped image.
    """
    w = params.resolution
    norm = _to_normalised(w)
    # theta acts on normalised output coordinates: N · to_input · N⁻¹.
    theta = (
        norm[:2] @ torch.cat([output_to_input(params), norm[2:].expand(params.n, 1, 3)], 1)
    ) @ torch.linalg.inv(norm)
    theta = theta[:, :2].to(device=params.disp.device, dtype=dtype)
    target = F.affine_grid(theta, [params.n, 1, w, w], align_corners=False)
    if not warp:
        return None, target
    edge = 1.0 - 1.0 / w
    return _remap_source(params, target.clamp(-edge, edge)), target
