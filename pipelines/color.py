"""Colour augmentation for side B (DeepFaceLab's src): colour transfer and the random HSV shift.

Spec §4/§5: with ``ct_mode`` set, every B face is re-coloured toward a random A face *before* the
geometric augmentation; ``random_hsv_power`` shifts the hue/saturation/value of the warped B input.
All functions take float BGR NCHW batches in [0, 1] and act per sample (image ``i`` against reference
``i``), batched where the maths allows: rct, lct, mkl, idt and sot are all batched here, so no mode
loops over the batch in Python.

Randomness (idt's rotations, sot's directions, the HSV draws) comes from the explicit CPU
``torch.Generator`` passed in, never from a global RNG, so a (seed, step, rank, side) key reproduces it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.colorspace import bgr_to_hsv, bgr_to_lab, hsv_to_bgr, lab_to_bgr

CT_MODES = ("none", "rct", "lct", "mkl", "idt", "sot")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] → [n, 3, H·W] in float64 (covariances of 3×3 are cheap; precision is not)."""
    return x.reshape(x.shape[0], x.shape[1], -1).double()


def _masked_moments(lab: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and population std, over the pixels where ``mask`` > 0 if given."""
    if mask is None:
        return lab.mean((2, 3), keepdim=True), lab.std((2, 3), keepdim=True, correction=0)
    weight = (mask > 0).to(lab.dtype)
    count = weight.sum((2, 3), keepdim=True).clamp_min(1.0)
    mean = (lab * weight).sum((2, 3), keepdim=True) / count
    var = (((lab - mean) ** 2) * weight).sum((2, 3), keepdim=True) / count
    return mean, var.sqrt()


def rct(image: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reinhard transfer: match per-channel mean and std in OpenCV Lab; L clipped 0..100, a/b ±127.

    A channel with zero spread in ``image`` maps to the reference mean (DFL would divide by zero).
    ``mask`` (N, 1, H, W): take both images' statistics only where it is > 0 (DeepFaceLab's merger
    passes the face mask as ``source_mask`` and ``target_mask``); the whole image is still mapped.
    """
    lab, ref = bgr_to_lab(image), bgr_to_lab(reference)
    mean, std = _masked_moments(lab, mask)
    ref_mean, ref_std = _masked_moments(ref, mask)
    out = (lab - mean) * (ref_std / std.clamp_min(1e-6)) + ref_mean
    low = torch.tensor([0.0, -127.0, -127.0], dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
    high = torch.tensor([100.0, 127.0, 127.0], dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
    return lab_to_bgr(torch.maximum(torch.minimum(out, high), low)).clamp(0.0, 1.0)


def _sym_power(mat: torch.Tensor, power: float, floor: float = 0.0) -> torch.Tensor:
    """``mat^power`` of symmetric positive (semi-)definite [n, 3, 3] matrices via eigh."""
    values, vectors = torch.linalg.eigh(mat)
    values = values.clamp_min(floor) ** power
    return vectors @ torch.diag_embed(values) @ vectors.transpose(-1, -2)


def _covariance(x: torch.Tensor, correction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample channel mean [n, 3, 1] and covariance [n, 3, 3] of flattened pixels."""
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    return mean, centred @ centred.transpose(-1, -2) / (x.shape[-1] - correction)


def lct(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Linear (PCA) transfer: x ↦ Cr^½ · Ci^-½ · (x − μi) + μr, covariances with eps·I added."""
    x, r = _flat(image), _flat(reference)
    eye = torch.eye(3, dtype=x.dtype, device=x.device) * eps
    mean_x, cov_x = _covariance(x, 0)
    mean_r, cov_r = _covariance(r, 0)
    transform = _sym_power(cov_r + eye, 0.5) @ torch.linalg.inv(_sym_power(cov_x + eye, 0.5))
    out = transform @ (x - mean_x) + mean_r
    return out.reshape(image.shape).to(image.dtype).clamp(0.0, 1.0)


def mkl(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Monge–Kantorovich linear transfer (Pitié & Kokaram 2007), sample covariances (ddof 1).

    T = A^-½ (A^½ B A^½)^½ A^-½ with A, B the image and reference covariances, the unique symmetric
    map taking N(μa, A) to N(μb, B); eigenvalues are floored at float64 eps as DFL does.
    """
    x, r = _flat(image), _flat(reference)
    floor = torch.finfo(torch.float64).eps
    mean_x, cov_x = _covariance(x, 1)
    mean_r, cov_r = _covariance(r, 1)
    a_half = _sym_power(cov_x, 0.5, floor)
    a_inv_half = _sym_power(cov_x, -0.5, floor)
    middle = _sym_power(a_half @ cov_r @ a_half, 0.5, floor)
    transform = a_inv_half @ middle @ a_inv_half
    out = transform @ (x - mean_x) + mean_r
    return out.reshape(image.shape).to(image.dtype).clamp(0.0, 1.0)


def random_rotations(n: int, generator: torch.Generator, dim: int = 3) -> torch.Tensor:
    """Haar-random rotations in SO(dim), [n, dim, dim] float64 (QR of a Gaussian, signs fixed)."""
    gauss = torch.randn(n, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(q)
    q[:, :, 0] *= torch.sign(det).unsqueeze(-1)
    return q


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Batched ``np.interp`` over the last axis: xp non-decreasing, ends clamp to fp[0] / fp[-1]."""
    idx = torch.searchsorted(xp.contiguous(), x.contiguous(), right=True)
    last = xp.shape[-1] - 1
    hi = idx.clamp(1, last)
    lo = hi - 1
    x0, x1 = xp.gather(-1, lo), xp.gather(-1, hi)
    f0, f1 = fp.gather(-1, lo), fp.gather(-1, hi)
    span = x1 - x0
    t = torch.where(span > 0, (x - x0) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    out = f0 + t.clamp(0.0, 1.0) * (f1 - f0)
    out = torch.where(x <= xp[..., :1], fp[..., :1], out)
    return torch.where(x >= xp[..., last:], fp[..., last:], out)


def _interp_uniform(
    x: torch.Tensor, start: torch.Tensor, step: torch.Tensor, fp: torch.Tensor
) -> torch.Tensor:
    """``_interp`` for the evenly spaced xp = start + k·step (k = 0..B−1): the index is arithmetic."""
    last = fp.shape[-1] - 1
    pos = ((x - start) / step.clamp_min(1e-12)).clamp(0, last)
    lo = pos.floor().long().clamp(max=max(last - 1, 0))
    frac = pos - lo
    f0, f1 = fp.gather(-1, lo), fp.gather(-1, (lo + 1).clamp(max=last))
    return f0 + frac * (f1 - f0)


def _cdf(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Normalised cumulative histogram on [lo, hi] with ``bins`` equal bins (numpy's edge rules)."""
    width = (hi - lo).clamp_min(1e-12)
    index = ((values - lo) / width * bins).floor().long().clamp(0, bins - 1)
    hist = torch.zeros(*values.shape[:-1], bins, dtype=values.dtype, device=values.device)
    hist.scatter_add_(-1, index, torch.ones_like(values))
    cdf = hist.cumsum(-1)
    return cdf / cdf[..., -1:]


def idt(
    image: torch.Tensor,
    reference: torch.Tensor,
    generator: torch.Generator,
    rotations: int = 20,
    bins: int = 256,
) -> torch.Tensor:
    """Iterative distribution transfer (Pitié et al. 2005): 20 random 3-D rotations, 256-bin 1-D
    histogram matching along each rotated axis, each step relaxed by 1/rotations.

    Values below the first histogram edge use np.interp's default (clamp to the first value); DFL
    passes left=0 there, which sends the darkest 1/256 of each projection toward 0 (not reproduced).
    """
    # float32 like DFL: this loop is memory-bound and 256-bin histograms need no more precision.
    x = image.reshape(image.shape[0], image.shape[1], -1).float()
    r = reference.reshape(reference.shape[0], reference.shape[1], -1).float()
    relaxation = 1.0 / rotations
    mats = random_rotations(rotations * x.shape[0], generator).view(rotations, x.shape[0], 3, 3)
    mats = mats.to(device=x.device, dtype=x.dtype)
    for rot in mats:
        xr, rr = rot @ x, rot @ r
        lo = torch.minimum(xr.amin(-1, keepdim=True), rr.amin(-1, keepdim=True))
        hi = torch.maximum(xr.amax(-1, keepdim=True), rr.amax(-1, keepdim=True))
        step = (hi - lo) / bins
        edges = lo + step * torch.arange(1, bins + 1, dtype=x.dtype, device=x.device)
        cdf_x, cdf_r = _cdf(xr, lo, hi, bins), _cdf(rr, lo, hi, bins)
        matched_edges = _interp(cdf_x, cdf_r, edges)
        moved = _interp_uniform(xr, lo + step, step, matched_edges)
        x = x + relaxation * (rot.transpose(-1, -2) @ (moved - xr))
    return x.reshape(image.shape).to(image.dtype).clamp(0.0, 1.0)


def _gaussian_disc_kernel(
    sigma: float, radius: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """OpenCV bilateralFilter's spatial support: Gaussian weights on the disc of ``radius``."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    dist2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    kernel = torch.exp(-dist2 / (2 * sigma**2)) * (dist2 <= radius**2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def smooth_like_bilateral(diff: torch.Tensor, sigma_space: float = 16.0) -> torch.Tensor:
    """The spatial part of ``cv2.bilateralFilter(diff, 0, sigmaColor=5, sigmaSpace=16)``.

    sot regularises its per-pixel colour change with that filter. Its colour term,
    exp(−|Δ|²/(2·5²)) over differences of a few hundredths, is ≈ 1, so the filter is in effect the
    normalised spatial Gaussian on OpenCV's disc (radius round(1.5σ), reflect-101 border); we apply
    exactly that, by FFT. The approximation error is measured against OpenCV in the tests.
    """
    radius = int(round(sigma_space * 1.5))
    n, c, h, w = diff.shape
    pad = min(radius, h - 1, w - 1)
    kernel = _gaussian_disc_kernel(sigma_space, radius, torch.float64, diff.device)
    padded = F.pad(diff.double(), (pad, pad, pad, pad), mode="reflect")
    # Taps beyond a small image's reflected border are dropped and the rest renormalised.
    ones = F.pad(torch.ones(1, 1, h, w, dtype=torch.float64, device=diff.device), (pad,) * 4, mode="reflect")
    size = (padded.shape[-2] + 2 * radius, padded.shape[-1] + 2 * radius)
    spectrum = torch.fft.rfft2(kernel, s=size)

    def conv(x: torch.Tensor) -> torch.Tensor:
        full = torch.fft.irfft2(torch.fft.rfft2(x, s=size) * spectrum, s=size)
        return full[..., radius + pad : radius + pad + h, radius + pad : radius + pad + w]

    return (conv(padded) / conv(ones)).to(diff.dtype)


def sot(
    image: torch.Tensor,
    reference: torch.Tensor,
    generator: torch.Generator,
    steps: int = 10,
    directions: int = 5,
    regularise: bool = True,
) -> torch.Tensor:
    """Sliced optimal transport: ``steps`` rounds, each averaging the 1-D sorted matchings along
    ``directions`` random unit directions; then the change is smoothed (see smooth_like_bilateral).
    Image and reference must have the same pixel count (both are R×R here).
    """
    n, c = image.shape[:2]
    src = image.reshape(n, c, -1).float()
    ref = reference.reshape(n, c, -1).float()
    if src.shape != ref.shape:
        raise ValueError(
            f"sot needs equal-sized image and reference, got {image.shape} and {reference.shape}"
        )
    current = src.clone()
    dirs = torch.randn(steps, directions, n, c, generator=generator, dtype=torch.float32)
    dirs = (dirs / dirs.norm(dim=-1, keepdim=True)).to(src.device)
    for step in range(steps):
        advect = torch.zeros_like(current)
        for d in dirs[step]:
            proj_src = (current * d[:, :, None]).sum(1)  # [n, P]
            proj_ref = (ref * d[:, :, None]).sum(1)
            sorted_src, order = proj_src.sort(-1)
            sorted_ref, _ = proj_ref.sort(-1)
            shift = torch.zeros_like(proj_src).scatter_(-1, order, sorted_ref - sorted_src)
            advect += shift[:, None, :] * d[:, :, None]
        current = current + advect / directions
    out = current.reshape(image.shape)
    if regularise:
        out = image + smooth_like_bilateral(out - image)
    return out.to(image.dtype).clamp(0.0, 1.0)


def color_transfer(
    mode: str,
    image: torch.Tensor,
    reference: torch.Tensor,
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Re-colour each ``image[i]`` toward ``reference[i]`` with DeepFaceLab's ``ct_mode``.

    ``mask`` (N, 1, H, W), as DeepFaceLab's merger uses it: rct takes its statistics inside the mask;
    the other modes see both images multiplied by the mask.
    """
    if mode == "none":
        return image
    if mode == "rct":
        return rct(image, reference, mask)
    if mask is not None:
        image, reference = image * mask, reference * mask
    if mode == "lct":
        return lct(image, reference)
    if mode == "mkl":
        return mkl(image, reference)
    if mode == "idt":
        return idt(image, reference, generator)
    if mode == "sot":
        return sot(image, reference, generator)
    raise ValueError(f"ct_mode {mode!r}: must be one of {', '.join(CT_MODES)}")


def hsv_shift_amounts(n: int, power: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample (hue degrees, saturation delta, value delta), [n, 3] float64.

    Hue: an integer uniform in [−h, h] with h = max(1, int(360·power·0.5)); S and V: (U − 0.5)·power.
    """
    h = max(1, int(360 * power * 0.5))
    hue = torch.randint(-h, h + 1, (n,), generator=generator).double()
    sv = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * power
    return torch.cat([hue[:, None], sv], 1)


def apply_hsv_shift(image: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
    """Shift hue (mod 360) and add to S and V (clipped to [0, 1]) in OpenCV float HSV; clip to [0, 1]."""
    hsv = bgr_to_hsv(image)
    amounts = amounts.to(device=image.device, dtype=image.dtype)
    hue = torch.remainder(hsv[:, 0] + amounts[:, 0, None, None], 360.0)
    sat = (hsv[:, 1] + amounts[:, 1, None, None]).clamp(0.0, 1.0)
    val = (hsv[:, 2] + amounts[:, 2, None, None]).clamp(0.0, 1.0)
    return hsv_to_bgr(torch.stack([hue, sat, val], 1)).clamp(0.0, 1.0)
