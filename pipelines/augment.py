"""Batched, device-side SAEHD augmentation: one implementation behind every data backend (spec §5).

A backend hands over decoded uint8 faces and their two masks at training resolution; ``Augmenter``
returns DeepFaceLab's four training tensors per side: ``warped`` (random warp + affine + flip, plus
colour work on B), ``target`` (affine + flip), the full-face ``mask`` and the eyes-mouth ``em`` mask
(both with the target's geometry). On a GPU everything runs batched on the batch's device with one
``grid_sample`` per tensor group, so images and masks share one geometric draw exactly. On the CPU
the same draw is resampled with OpenCV per sample (``pipelines.cpu_sampler``), about 1.7-2× cheaper
than ``grid_sample`` with full-resolution torch grids there (the complete CPU data path is bound by
this work); both samplers evaluate the one geometry of ``pipelines.warp`` and agree to ~1/255
(tested).

Randomness: every call derives its generators from (seed, step, rank, side) with a fixed mixing
function, so a batch is reproducible from its key alone, does not depend on the order of calls, and
differs across ranks. Parameters are drawn on the CPU and moved, so CPU and GPU runs draw the same.
Separate streams for geometry, HSV and colour transfer keep e.g. the geometry of a run unchanged when
``random_hsv_power`` is switched on.

What each side gets is its ``pipelines.sides.DataSide`` policy (flip, warp, HSV power, colour-transfer
source). For SAEHD (``pipelines.sides.saehd_sides``), per DeepFaceLab, HSV shift and colour transfer act
on side B (src) only; flips default to on for A (dst) and off for B (``DataConfig.random_flip_a/b``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from pipelines.color import CT_MODES, apply_hsv_shift, color_transfer, hsv_shift_amounts
from pipelines.cpu_sampler import opencv_geometry
from pipelines.sides import SAEHD_SIDE_NAMES, DataSide, check_sides, saehd_sides
from pipelines.warp import MIN_WORK_RES, WarpParams, sample_warp_params, sampling_grids
from torchsae.config import DataConfig

SIDES = SAEHD_SIDE_NAMES  # the side names generator_for also takes (as keys 0 and 1)
SAMPLERS = ("auto", "torch", "opencv")
STREAM_GEOMETRY, STREAM_HSV, STREAM_COLOR = 0, 1, 2
_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """One step of SplitMix64: a well-mixed 64-bit function of a 64-bit input."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def generator_for(
    seed: int, step: int, rank: int, side: str | int, stream: int = STREAM_GEOMETRY
) -> torch.Generator:
    """A CPU generator keyed by (seed, step, rank, side, stream); same key, same draws, anywhere.

    ``side``: a side's ``DataSide.key``, or SAEHD's ``"a"`` / ``"b"`` (keys 0 and 1)."""
    if isinstance(side, str):
        if side not in SIDES:
            raise ValueError(f"side must be 'a' or 'b' (or a side key), got {side!r}")
        side = SIDES.index(side)
    state = 0
    for part in (seed, step, rank, side, stream):
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return torch.Generator(device="cpu").manual_seed(state & ((1 << 63) - 1))


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False)


def apply_geometry(
    images: torch.Tensor,
    masks: torch.Tensor,
    params: WarpParams,
    *,
    warp: bool,
    warped_source: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Resample a float batch with explicit ``params``: the deterministic half of the augmentation.

    ``images`` [n, 3, R, R] and ``masks`` [n, 2, R, R] are float in [0, 1]; ``warped_source`` (default
    ``images``) is what the warped output is resampled from (B's HSV-shifted copy). Images use
    bicubic sampling (target: replicate border; warped: zero border, as DFL's ``cv2.remap``), masks
    bilinear with a zero border. Below 64 px the work happens at 64 and is resized back, as in DFL.
    """
    res = images.shape[-1]
    work = params.resolution
    if work != max(res, MIN_WORK_RES):
        raise ValueError(f"params drawn for {work} px do not fit a {res} px batch")
    shared_source = warped_source is None or warped_source is images
    if work != res:
        if not shared_source:
            warped_source = _resize(warped_source, work, "bicubic")
        images = _resize(images, work, "bicubic")
        masks = _resize(masks, work, "bilinear")
    if shared_source:
        warped_source = images
    # only the warp grid's inputs go to the device: the affine part is small CPU maths
    # (``output_to_input`` reads it on the CPU), so moving all of ``params`` would copy it back
    on_device = replace(params, cell=params.cell.to(images.device), disp=params.disp.to(images.device))
    warped_grid, target_grid = sampling_grids(on_device, warp=warp, dtype=images.dtype)

    def sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
        return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)

    target = sample(images, target_grid, "bicubic", "border")
    if warped_grid is not None:
        warped = sample(warped_source, warped_grid, "bicubic", "zeros")
    elif warped_source is images:
        warped = target
    else:
        warped = sample(warped_source, target_grid, "bicubic", "border")
    mask_pair = sample(masks, target_grid, "bilinear", "zeros")
    if work != res:
        target = _resize(target, res, "bicubic")
        warped = target if warped is target else _resize(warped, res, "bicubic")
        mask_pair = _resize(mask_pair, res, "bilinear")
    target = target.clamp_(0.0, 1.0)
    warped = target.clone() if warped is target else warped.clamp_(0.0, 1.0)
    mask_pair = mask_pair.clamp_(0.0, 1.0)
    em = mask_pair[:, 1:2]
    # DFL divides by the max after warping; an all-zero mask stays zero (0 / tiny = 0).
    em = em / em.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return {"warped": warped, "target": target, "mask": mask_pair[:, 0:1].contiguous(), "em": em}


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float32 0..1; float tensors are taken as already in [0, 1]."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class Augmenter:
    """Per-side augmentation; call once per side per step.

    Each side's policy is its ``DataSide`` in ``sides``; by default SAEHD's A/B from ``data_cfg``
    (``pipelines.sides.saehd_sides``: random_warp, random_flip_a/b, and random_hsv_power and ct_mode
    on side B only); while pretraining the trainer passes the effective config's
    (``train.pretrain.effective_config``).
    ``sampler``: ``auto`` resamples CPU batches with OpenCV and device batches with ``grid_sample``;
    ``torch`` or ``opencv`` force one (``opencv`` needs CPU tensors).
    """

    def __init__(
        self,
        resolution: int,
        data_cfg: DataConfig | None,
        seed: int,
        *,
        sampler: str = "auto",
        sides: Sequence[DataSide] | None = None,
    ) -> None:
        self.resolution = int(resolution)
        self.seed = int(seed)
        if sides is None:
            if data_cfg is None:
                raise ValueError("Augmenter needs data_cfg or sides")
            sides = saehd_sides(data_cfg)
        self.sides = {side.name: side for side in check_sides(sides)}
        for side in self.sides.values():
            if side.ct_mode not in CT_MODES:
                raise ValueError(f"ct_mode {side.ct_mode!r}: must be one of {', '.join(CT_MODES)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r}: must be one of {', '.join(SAMPLERS)}")
        self.sampler = sampler

    def params(self, n: int, *, step: int, rank: int, side: str) -> WarpParams:
        """The geometric draw that ``__call__`` uses for this key (CPU tensors)."""
        policy = self.sides[side]
        gen = generator_for(self.seed, step, rank, policy.key, STREAM_GEOMETRY)
        return sample_warp_params(n, self.resolution, gen, flip=policy.flip)

    def __call__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        *,
        step: int,
        rank: int,
        side: str,
        ct_reference: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Augment one side's batch. ``images`` uint8 [n, 3, R, R] BGR, ``masks`` uint8 [n, 2, R, R]
        (full face, eyes-mouth), ``ct_reference`` uint8 [m, 3, R, R] faces of the side's ``ct_source``
        (needed where the side has colour transfer: SAEHD's B, A faces, when ct_mode is set). Returns float32 ``warped``, ``target`` [n, 3, R, R] and ``mask``, ``em``
        [n, 1, R, R], all in [0, 1], on the images' device.
        """
        n, channels, height, width = images.shape
        if channels != 3 or height != self.resolution or width != self.resolution:
            raise ValueError(
                f"images must be [n, 3, {self.resolution}, {self.resolution}], got {tuple(images.shape)}"
            )
        if masks.shape != (n, 2, height, width):
            raise ValueError(f"masks must be [{n}, 2, {height}, {width}], got {tuple(masks.shape)}")
        use_opencv = self.sampler == "opencv" or (self.sampler == "auto" and images.device.type == "cpu")
        # OpenCV takes uint8 as is (scaled once at the end); grid_sample needs float in [0, 1]
        image = images if use_opencv else _to_unit(images)
        mask = masks if use_opencv else _to_unit(masks.to(images.device))
        policy = self.sides[side]
        params = self.params(n, step=step, rank=rank, side=side)
        if policy.colour_transfer:
            if ct_reference is None or ct_reference.shape[0] == 0:
                source = str(policy.ct_source).upper()
                raise ValueError(f"ct_mode {policy.ct_mode!r} needs ct_reference faces from side {source}")
            gen = generator_for(self.seed, step, rank, policy.key, STREAM_COLOR)
            pick = torch.randint(0, ct_reference.shape[0], (n,), generator=gen).to(ct_reference.device)
            reference = _to_unit(ct_reference[pick].to(images.device))
            image = color_transfer(policy.ct_mode, _to_unit(image), reference, gen)
        warped_source = image
        if policy.hsv_power > 0:
            gen = generator_for(self.seed, step, rank, policy.key, STREAM_HSV)
            warped_source = apply_hsv_shift(_to_unit(image), hsv_shift_amounts(n, policy.hsv_power, gen))
        geometry = opencv_geometry if use_opencv else apply_geometry
        return geometry(image, mask, params, warp=policy.warp, warped_source=warped_source)
