"""OpenCV resampling of the augmentation geometry, for batches that live on the CPU.

Why a second sampler: on a CPU-only machine the augmentation is part of the host's cost per sample,
and torch's ``grid_sample`` (bicubic, float32) plus building full-resolution grids in torch cost
about 2 ms per sample at 128 px and 6.8 ms at 256 on one core, over half of it building the grids.
OpenCV does the same resampling per sample (measured 1.1 and 3.9 ms, see benchmarks/RESULTS.md),
with its inputs built from the same parameter draw
(``pipelines.warp``): the geometry (affine matrix, flip, DFL's control grid, the clamp standing in
for warpAffine's border) is defined once there and only *evaluated* here.

Per sample, with q = the affine + flip inverse (``warp.output_to_input``):

* target: ``cv2.warpAffine(image, q, INTER_CUBIC | WARP_INVERSE_MAP, BORDER_REPLICATE)`` — the
  torch path's bicubic ``grid_sample`` with border padding (both use a = −0.75 and clamp each tap);
* masks (both channels in one call): ``warpAffine`` with INTER_LINEAR and a zero border;
* warped: DFL's map (control grid → ``cv2.resize`` → crop, ``warp.control_grid``) read at
  clamp(q) by ``warpAffine`` of the map itself (linear, replicate border = the clamp), then one
  ``cv2.remap(image, map, INTER_CUBIC, BORDER_CONSTANT)`` — the torch path's composed grid.

Images are resampled in float32 (each uint8 sample is scaled to [0, 1] once, in cache): OpenCV's
INTER_CUBIC has no SIMD kernel for uint8 in this build and ran slower on uint8 than on float32.
The masks stay uint8 (OpenCV's linear warps are vectorised there) and are rounded to 1/255.

Precision against the torch sampler (``tests/test_augment_cpu.py``): OpenCV quantises linear-warp
positions to 1/32 pixel; the composed map is linear between pixel samples of DFL's piecewise-bilinear
map. Measured: target images equal to 1e-4, warped images within a mean of 0.0003, masks within
a mean of 0.0002 (uint8 rounding) with centroids aligned to 0.05 px.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pipelines.warp import WarpParams, control_grid, output_to_input

_INVERSE = cv2.WARP_INVERSE_MAP
_UNIT = np.float32(1.0 / 255.0)


def _planes(x: torch.Tensor) -> np.ndarray:
    """A CPU batch as numpy, uint8 kept, anything else as float32 (one conversion per batch)."""
    x = x.cpu()
    return x.numpy() if x.dtype == torch.uint8 else x.float().numpy()


def _image_hwc(planes: np.ndarray) -> np.ndarray:
    """One image (3, H, W) (uint8 0..255 or float 0..1) as contiguous float32 (H, W, 3) in [0, 1].

    Float because OpenCV's cubic resampling runs faster on float32 than on uint8 here (measured
    0.33 vs 0.43 ms at 128 px, 1.2 vs 1.5 ms at 256) and the outputs are float anyway.
    """
    if planes.dtype == np.uint8:
        return np.multiply(cv2.merge(list(planes)), _UNIT, dtype=np.float32)
    return cv2.merge(list(planes))


def _store_image(src: np.ndarray, dst: np.ndarray) -> None:
    """(H, W, 3) float result → (3, H, W) clipped to [0, 1], while it is still in cache."""
    np.clip(src.reshape(dst.shape[1], dst.shape[2], 3).transpose(2, 0, 1), 0.0, 1.0, out=dst)


def _store_masks(src: np.ndarray, mask: np.ndarray, em: np.ndarray) -> None:
    """(H, W, 2) warped masks → full-face (H, W) and eyes-mouth divided by its maximum, float32."""
    src = src.reshape(mask.shape[0], mask.shape[1], 2)
    full, eyes = src[..., 0], src[..., 1]
    peak = float(eyes.max())
    if src.dtype == np.uint8:
        np.multiply(full, _UNIT, out=mask)
    else:
        np.clip(full, 0.0, 1.0, out=mask)
        peak = min(peak, 1.0)
    # DFL divides by the max after warping; an all-zero mask stays zero.
    np.multiply(eyes, np.float32(1.0 / peak if peak > 0 else 0.0), out=em)
    if src.dtype != np.uint8:
        np.clip(em, 0.0, 1.0, out=em)


def _resized(x: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    if x.shape[0] == size:
        return x
    out = cv2.resize(x, (size, size), interpolation=interpolation)
    return out.reshape(size, size, -1)


def _warp_map(grid: np.ndarray, cell: int, w: int, inverse: np.ndarray) -> np.ndarray:
    """DFL's remap map read at clamp(q): (w, w, 2) float32 source positions for the warped image."""
    count = w // cell + 1
    half = cell // 2
    dfl_map = cv2.resize(grid[:count, :count], (w + cell, w + cell), interpolation=cv2.INTER_LINEAR)
    dfl_map = dfl_map[half : half + w, half : half + w]
    return cv2.warpAffine(
        dfl_map, inverse, (w, w), flags=cv2.INTER_LINEAR | _INVERSE, borderMode=cv2.BORDER_REPLICATE
    )


def sample_maps(params: WarpParams, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``i``'s OpenCV inputs: the inverse affine (2, 3) for ``warpAffine(..., WARP_INVERSE_MAP)``
    (target, masks) and the warped image's (w, w, 2) float32 ``remap`` map."""
    inverse = output_to_input(params)[i].numpy()
    grid = control_grid(params)[i].numpy().astype(np.float32)
    return inverse, _warp_map(grid, int(params.cell[i]), params.resolution, inverse)


def opencv_geometry(
    images: torch.Tensor,
    masks: torch.Tensor,
    params: WarpParams,
    *,
    warp: bool,
    warped_source: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``pipelines.augment.apply_geometry`` evaluated with OpenCV on CPU tensors.

    ``images`` [n, 3, R, R] and ``masks`` [n, 2, R, R] are uint8 (0..255) or float (0..1);
    ``warped_source`` (default ``images``) is what the warped output is resampled from. Returns the
    same dict as ``apply_geometry``: float32 ``warped``, ``target`` [n, 3, R, R], ``mask``, ``em``
    [n, 1, R, R] in [0, 1], ``em`` divided by its maximum. Below 64 px the work happens at 64 (cubic
    up and back for images, linear for masks), as in DFL.
    """
    n, _, res, _ = images.shape
    w = params.resolution
    if w != max(res, 64):
        raise ValueError(f"params drawn for {w} px do not fit a {res} px batch")
    shared = warped_source is None or warped_source is images
    inverse = output_to_input(params).numpy()
    grid = control_grid(params).numpy().astype(np.float32) if warp else None
    cells = params.cell.tolist()
    images, masks = _planes(images), _planes(masks)
    source = images if shared else _planes(warped_source)
    target = torch.empty(n, 3, res, res)
    warped = target if (shared and not warp) else torch.empty(n, 3, res, res)
    mask, em = torch.empty(n, 1, res, res), torch.empty(n, 1, res, res)
    target_np, warped_np, mask_np, em_np = target.numpy(), warped.numpy(), mask.numpy(), em.numpy()
    size = (w, w)
    cubic, linear = cv2.INTER_CUBIC, cv2.INTER_LINEAR
    for i in range(n):
        q = inverse[i]
        image = _resized(_image_hwc(images[i]), w, cubic)
        out = cv2.warpAffine(image, q, size, flags=cubic | _INVERSE, borderMode=cv2.BORDER_REPLICATE)
        _store_image(_resized(out, res, cubic), target_np[i])
        pair = _resized(cv2.merge(list(masks[i])), w, linear)  # uint8 stays uint8: SIMD linear warps
        out = cv2.warpAffine(pair, q, size, flags=linear | _INVERSE, borderMode=cv2.BORDER_CONSTANT)
        _store_masks(_resized(out, res, linear), mask_np[i, 0], em_np[i, 0])
        if warped is target:
            continue
        if not shared:
            image = _resized(_image_hwc(source[i]), w, cubic)
        if warp:
            source_map = _warp_map(grid[i], int(cells[i]), w, q)
            out = cv2.remap(image, source_map, None, cubic, borderMode=cv2.BORDER_CONSTANT)
        else:
            out = cv2.warpAffine(image, q, size, flags=cubic | _INVERSE, borderMode=cv2.BORDER_REPLICATE)
        _store_image(_resized(out, res, cubic), warped_np[i])
    if warped is target:
        warped = target.clone()
    return {"warped": warped, "target": target, "mask": mask, "em": em}
