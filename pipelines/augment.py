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

Per DeepFaceLab, HSV shift and colour transfer act on side B (src) only; flips default to on for A
(dst) and off for B (``DataConfig.random_flip_a/b``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from pipelines.color import CT_MODES, apply_hsv_shift, color_transfer, hsv_shift_amounts
from pipelines.cpu_sampler import opencv_geometry
from pipelines.warp import MIN_WORK_RES, WarpParams, sample_warp_params, sampling_grids
from torchsae.config import DataConfig

SIDES = ("a", "b")
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
    seed: int, step: int, rank: int, side: str, stream: int = STREAM_GEOMETRY
) -> torch.Generator:
    """A CPU generator keyed by (seed, step, rank, side, stream); same key, same draws, anywhere."""
    if side not in SIDES:
        raise ValueError(f"side must be 'a' or 'b', got {side!r}")
    state = 0
    for part in (seed, step, rank, SIDES.index(side), stream):
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
    """SAEHD's per-side augmentation; call once per side per step.

    Options come from ``data_cfg`` (random_warp, random_flip_a/b, random_hsv_power, ct_mode); while
    pretraining the trainer passes the effective config's (``train.pretrain.effective_config``).
    HSV and colour transfer always apply to side B only.
    ``sampler``: ``auto`` resamples CPU batches with OpenCV and device batches with ``grid_sample``;
    ``torch`` or ``opencv`` force one (``opencv`` needs CPU tensors).
    """

    def __init__(
        self,
        resolution: int,
        data_cfg: DataConfig,
        seed: int,
        *,
        sampler: str = "auto",
    ) -> None:
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.flip = {"a": data_cfg.random_flip_a, "b": data_cfg.random_flip_b}
        self.random_warp = data_cfg.random_warp
        self.hsv_power = float(data_cfg.random_hsv_power)
        self.ct_mode = data_cfg.ct_mode
        if self.ct_mode not in CT_MODES:
            raise ValueError(f"ct_mode {self.ct_mode!r}: must be one of {', '.join(CT_MODES)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r}: must be one of {', '.join(SAMPLERS)}")
        self.sampler = sampler

    def params(self, n: int, *, step: int, rank: int, side: str) -> WarpParams:
        """The geometric draw that ``__call__`` uses for this key (CPU tensors)."""
        gen = generator_for(self.seed, step, rank, side, STREAM_GEOMETRY)
        return sample_warp_params(n, self.resolution, gen, flip=self.flip[side])

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
        (full face, eyes-mouth), ``ct_reference`` uint8 [m, 3, R, R] A faces (needed on side B when
        ct_mode is set). Returns float32 ``warped``, ``target`` [n, 3, R, R] and ``mask``, ``em``
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
        params = self.params(n, step=step, rank=rank, side=side)
        if side == "b" and self.ct_mode != "none":
            if ct_reference is None or ct_reference.shape[0] == 0:
                raise ValueError(f"ct_mode {self.ct_mode!r} needs ct_reference faces from side A")
            gen = generator_for(self.seed, step, rank, side, STREAM_COLOR)
            pick = torch.randint(0, ct_reference.shape[0], (n,), generator=gen).to(ct_reference.device)
            reference = _to_unit(ct_reference[pick].to(images.device))
            image = color_transfer(self.ct_mode, _to_unit(image), reference, gen)
        warped_source = image
        if side == "b" and self.hsv_power > 0:
            gen = generator_for(self.seed, step, rank, side, STREAM_HSV)
            warped_source = apply_hsv_shift(_to_unit(image), hsv_shift_amounts(n, self.hsv_power, gen))
        geometry = opencv_geometry if use_opencv else apply_geometry
        return geometry(image, mask, params, warp=self.random_warp, warped_source=warped_source)
