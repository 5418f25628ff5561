"""The two optional discriminators of SAEHD (spec §3).

* ``CodeDiscriminator`` (DF's ``true_face_power``): tells A codes from B codes, pushing the inter to
  give B-like codes for A faces.
* ``UNetPatchDiscriminator`` (``gan_power``): a small U-Net whose receptive field is chosen to match
  ``gan_patch_size``; it returns a patch-logit map at the bottleneck and one at full resolution.

Names (``convs.0``, ``upconvs.0``, ``in_conv``, ``center_out``, ...) follow DeepFaceLab's variable
names (``convs_0``, ``upconvs_0``) so its discriminator weights import mechanically.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from torchsae.models.layers import Conv2d, glorot_init_


class CodeDiscriminator(nn.Module):
    """``1 + code_res // 8`` stride-2 convs (first 4×4, then 3×3; channels ch·min(2^i, 8)), lrelu 0.1,
    then a 1×1 conv to one logit channel.

    ``code_res`` is the spatial size of the inter's output: 2L, or L with option ``t`` (this is what
    makes the parameter counts of ``df-udt`` differ from ``df-ud``). Padding is DeepFaceLab's symmetric
    ``k // 2``, so the 4×4 first conv maps s -> s/2 + 1 for even s; the logits are averaged over space
    by the loss, so only the count of positions depends on it.
    """

    def __init__(self, in_ch: int, code_res: int, ch: int = 256) -> None:
        super().__init__()
        layers = []
        prev = in_ch
        for i in range(1 + code_res // 8):
            cur = ch * min(2**i, 8)
            layers.append(Conv2d(prev, cur, 4 if i == 0 else 3, stride=2))
            prev = cur
        self.convs = nn.ModuleList(layers)
        self.out_conv = Conv2d(prev, 1, 1, same=False)
        glorot_init_(self)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = code
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        return self.out_conv(x)


def receptive_field(strides: tuple[int, ...], kernel_size: int = 3) -> int:
    """Receptive field of a stack of k×k convs with these strides: k + Σ_{i≥1} (k−1)·Π_{j<i} s_j."""
    field, jump = kernel_size, strides[0]
    for stride in strides[1:]:
        field += (kernel_size - 1) * jump
        jump *= stride
    return field


def find_patch_layers(patch_size: int, max_layers: int = 9) -> list[tuple[int, int]]:
    """The (kernel, stride) stack whose receptive field is closest to ``patch_size`` (spec §3).

    Candidates: 1..max_layers 3×3 convs, the first stride 2 and the rest stride 1 or 2. Ties go to
    fewer layers, then to more total stride (a coarser, cheaper bottleneck).
    """
    best_key: tuple[int, int, int] | None = None
    best: tuple[int, ...] = (2,)
    for n in range(1, max_layers + 1):
        for rest in itertools.product((1, 2), repeat=n - 1):
            strides = (2, *rest)
            total_stride = 1
            for s in strides:
                total_stride *= s
            key = (abs(receptive_field(strides) - patch_size), n, -total_stride)
            if best_key is None or key < best_key:
                best_key, best = key, strides
    return [(3, s) for s in best]


class ConvTranspose2dSame(nn.ConvTranspose2d):
    """TensorFlow's ``conv2d_transpose(padding='SAME')``: output = input·stride.

    TF crops the (in−1)·s + k full output by ``k − s`` pixels, ``(k − s) // 2`` at the top/left and
    the rest at the bottom/right. PyTorch's ``padding`` crops symmetrically, which for k = 3, s = 2
    would shift the image by one pixel, so the crop is done by hand.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=0)
        self._crop = max(kernel_size - stride, 0)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        y = super().forward(x)
        h, w = x.shape[-2] * self.stride[0], x.shape[-1] * self.stride[1]
        top = self._crop // 2
        return y[..., top : top + h, top : top + w]


class UNetPatchDiscriminator(nn.Module):
    """U-Net patch discriminator: ``forward(x) -> (center_logits, full_logits)``.

    Level channels: level −1 (after ``in_conv``) = base, level i = min(base·2^(i+1), 512). Encoder
    convs keep each input as a skip; the decoder's transposed convs mirror the strides and concatenate
    ``[skip, upsampled]`` on channels; ``out_conv`` maps 2·base channels to one logit.
    """

    def __init__(self, patch_size: int, in_ch: int = 3, base_ch: int = 16) -> None:
        super().__init__()
        self.layers = find_patch_layers(patch_size)
        n = len(self.layers)
        chs = [min(base_ch * 2**i, 512) for i in range(n + 1)]  # chs[i + 1] is level i
        self.in_conv = Conv2d(in_ch, chs[0], 1, same=False)
        convs, upconvs = [], []
        for i, (k, s) in enumerate(self.layers):
            convs.append(Conv2d(chs[i], chs[i + 1], k, stride=s))
            up_in = chs[i + 1] * (1 if i == n - 1 else 2)
            upconvs.insert(0, ConvTranspose2dSame(up_in, chs[i], k, s))
        self.convs = nn.ModuleList(convs)
        self.upconvs = nn.ModuleList(upconvs)  # deepest first, the order they run in
        self.out_conv = Conv2d(chs[0] * 2, 1, 1, same=False)
        self.center_out = Conv2d(chs[n], 1, 1, same=False)
        self.center_conv = Conv2d(chs[n], chs[n], 1, same=False)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.in_conv(x), 0.2)
        skips = []
        for conv in self.convs:
            skips.append(x)
            x = F.leaky_relu(conv(x), 0.2)
        center = self.center_out(x)
        x = F.leaky_relu(self.center_conv(x), 0.2)
        for upconv, skip in zip(self.upconvs, reversed(skips), strict=True):
            x = torch.cat([skip, F.leaky_relu(upconv(x), 0.2)], dim=1)
        return center, self.out_conv(x)
