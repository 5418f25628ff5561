"""Encoder, Inter and Decoder of SAEHD for ``df`` / ``liae`` with the u, d, t, c options (spec §2.2-2.3).

Each class takes plain ints and option flags rather than a ModelConfig, so the same code builds DF's
inter (out_ch = ae_dims) and LIAE's two inters (out_ch = 2·ae_dims), and the decoders of either.
Attribute names are DeepFaceLab's TensorFlow variable names (see ``layers``): an imported DeepFaceLab
model loads by renaming keys and transposing kernels, nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from torchsae.models.layers import (
    Conv2d,
    Downscale,
    DownscaleBlock,
    ResidualBlock,
    Upscale,
    depth_to_space,
    flatten_chw,
    pixel_norm,
)


def _ceil_half(size: int, times: int) -> int:
    """Spatial size after ``times`` stride-2 SAME convs: ceil(size / 2) each time."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


class Encoder(nn.Module):
    """Image (N, 3, R, R) -> flat code (N, 8E·s²), s = R/16 (R/32 with ``t``); pixel-normed with ``u``.

    Without ``t``: DownscaleBlock ``down1`` of four 5×5 stride-2 convs (E, 2E, 4E, 8E).
    With ``t``: down1, res1, down2..down5, res5 (E, 2E, 4E, 8E, 8E), a deeper and cheaper-to-decode
    encoder.
    """

    def __init__(self, in_ch: int, e_ch: int, t: bool = False, u: bool = False, cosine: bool = False) -> None:
        super().__init__()
        self.t = t
        self.u = u
        if t:
            self.down1 = Downscale(in_ch, e_ch, 5, cosine)
            self.res1 = ResidualBlock(e_ch, cosine=cosine)
            self.down2 = Downscale(e_ch, e_ch * 2, 5, cosine)
            self.down3 = Downscale(e_ch * 2, e_ch * 4, 5, cosine)
            self.down4 = Downscale(e_ch * 4, e_ch * 8, 5, cosine)
            self.down5 = Downscale(e_ch * 8, e_ch * 8, 5, cosine)
            self.res5 = ResidualBlock(e_ch * 8, cosine=cosine)
        else:
            self.down1 = DownscaleBlock(in_ch, e_ch, 4, 5, cosine)
        self.out_ch = e_ch * 8

    def flat_dim(self, resolution: int) -> int:
        """Length of the flat code for a square input of ``resolution`` pixels."""
        return self.out_ch * _ceil_half(resolution, 5 if self.t else 4) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.t:
            x = self.res1(self.down1(x))
            x = self.down4(self.down3(self.down2(x)))
            x = self.res5(self.down5(x))
        else:
            x = self.down1(x)
        x = flatten_chw(x)
        return pixel_norm(x) if self.u else x


class Inter(nn.Module):
    """Flat code -> Dense(ae) -> Dense(L·L·out_ch) -> reshape (out_ch, L, L) -> Upscale (not with ``t``).

    No activation between or after the dense layers (DeepFaceLab has none). Output (out_ch, 2L, 2L),
    or (out_ch, L, L) with ``t``.
    """

    def __init__(
        self, in_dim: int, ae_ch: int, out_ch: int, lowest_res: int, t: bool = False, cosine: bool = False
    ) -> None:
        super().__init__()
        self.out_ch = out_ch
        self.lowest_res = lowest_res
        self.dense1 = nn.Linear(in_dim, ae_ch)
        self.dense2 = nn.Linear(ae_ch, lowest_res * lowest_res * out_ch)
        self.upscale1 = None if t else Upscale(out_ch, out_ch, cosine=cosine)

    @property
    def out_res(self) -> int:
        """Spatial size of the code this inter produces (what the code discriminator sees)."""
        return self.lowest_res if self.upscale1 is None else self.lowest_res * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense2(self.dense1(x))
        x = x.reshape(x.shape[0], self.out_ch, self.lowest_res, self.lowest_res)
        return x if self.upscale1 is None else self.upscale1(x)


class Decoder(nn.Module):
    """Code (in_ch, s, s) -> BGR image (3, R, R) and mask (1, R, R), both through a sigmoid.

    Image branch: Upscale + ResidualBlock per level (8D, 4D, 2D; ``t`` adds a second 8D level), then
    ``out_conv`` 1×1 — or with ``d`` the 1×1 ``out_conv`` and three 3×3 ``out_conv1..3`` concatenated
    and depth-to-space'd, which doubles the resolution. Mask branch from the same code: Upscales only
    (8M, 4M, 2M; ``t`` adds 8M; ``d`` adds M), then ``out_convm`` 1×1.

    The attributes are created in DeepFaceLab's order (upscale*, res*, upscalem*, out_conv*,
    out_convm) so ``state_dict()`` lists keys in the order of DeepFaceLab's weight files.
    """

    def __init__(
        self, in_ch: int, d_ch: int, d_mask_ch: int, d: bool = False, t: bool = False, cosine: bool = False
    ) -> None:
        super().__init__()
        self.d = d
        levels = [8, 8, 4, 2] if t else [8, 4, 2]  # channel multipliers, deepest first
        image_chs = [d_ch * m for m in levels]
        mask_chs = [d_mask_ch * m for m in levels]
        prev = in_ch
        for i, ch in enumerate(image_chs):
            setattr(self, f"upscale{i}", Upscale(prev, ch, cosine=cosine))
            prev = ch
        for i, ch in enumerate(image_chs):
            setattr(self, f"res{i}", ResidualBlock(ch, cosine=cosine))
        prev = in_ch
        for i, ch in enumerate(mask_chs):
            setattr(self, f"upscalem{i}", Upscale(prev, ch, cosine=cosine))
            prev = ch
        self.out_conv = Conv2d(image_chs[-1], 3, 1)
        if d:
            self.out_conv1 = Conv2d(image_chs[-1], 3, 3)
            self.out_conv2 = Conv2d(image_chs[-1], 3, 3)
            self.out_conv3 = Conv2d(image_chs[-1], 3, 3)
            setattr(self, f"upscalem{len(mask_chs)}", Upscale(prev, d_mask_ch, cosine=cosine))
            mask_chs.append(d_mask_ch)
            prev = d_mask_ch
        self.out_convm = Conv2d(prev, 1, 1)
        self.n_levels = len(image_chs)
        self.n_mask_levels = len(mask_chs)

    def forward_image(self, z: torch.Tensor) -> torch.Tensor:
        """The BGR image in [0, 1] only."""
        x = z
        for i in range(self.n_levels):
            x = getattr(self, f"res{i}")(getattr(self, f"upscale{i}")(x))
        if self.d:
            x = torch.cat([self.out_conv(x), self.out_conv1(x), self.out_conv2(x), self.out_conv3(x)], dim=1)
            x = depth_to_space(x, 2)
        else:
            x = self.out_conv(x)
        return torch.sigmoid(x)

    def forward_mask(self, z: torch.Tensor) -> torch.Tensor:
        """The mask in [0, 1] only; export uses this for decoder A, whose image is never needed."""
        m = z
        for i in range(self.n_mask_levels):
            m = getattr(self, f"upscalem{i}")(m)
        return torch.sigmoid(self.out_convm(m))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_image(z), self.forward_mask(z)
