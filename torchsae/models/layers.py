"""Building blocks of DeepFaceLab's SAEHD networks (spec §2.1), as plain ``nn.Module`` code.

Two details decide whether DeepFaceLab weights load and reproduce DeepFaceLab's outputs exactly:

* ``Conv2d`` pads symmetrically by ``k // 2`` on every side and then runs a VALID convolution, the
  way DeepFaceLab's own Conv2D implements ``padding='SAME'``. For the odd kernels of the
  autoencoder this equals the spec's ``(k - 1) // 2``; with stride 2 it gives ``ceil(in / 2)``. It is
  *not* TensorFlow's asymmetric SAME (which puts the odd pixel at the bottom/right), so do not
  "fix" it.
* ``depth_to_space`` uses TensorFlow's DCR channel order, not ``torch.pixel_shuffle`` (CRD).

Submodule names (``conv1``, ``conv2``, ``downs``) mirror DeepFaceLab's TensorFlow variable names so
that ``down1/downs_0/conv1/weight:0`` maps mechanically to ``down1.downs.0.conv1.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_act(x: torch.Tensor) -> torch.Tensor:
    """``x * cos(x)``: the activation DeepFaceLab uses everywhere with archi option ``c``."""
    return x * torch.cos(x)


class Activation(nn.Module):
    """Leaky ReLU with a fixed slope, or the cosine activation when ``cosine`` is set.

    One module rather than a bare function so the option travels with the layer that owns it and the
    printed model shows which activation a block uses.
    """

    def __init__(self, slope: float, cosine: bool = False) -> None:
        super().__init__()
        self.slope = slope
        self.cosine = cosine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            return cosine_act(x)
        return F.leaky_relu(x, self.slope)

    def extra_repr(self) -> str:
        return "x*cos(x)" if self.cosine else f"leaky_relu({self.slope})"


def glorot_init_(module: nn.Module) -> None:
    """Glorot-uniform kernels and zero biases for every conv and dense layer inside ``module``.

    TensorFlow's ``get_variable`` default, which DeepFaceLab relies on. PyTorch's fan computation for
    a conv weight (out, in, kh, kw) is kh*kw*in / kh*kw*out, the same as TensorFlow's for
    (kh, kw, in, out); Glorot only uses the sum, so transposed convs agree as well.
    """
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


class Conv2d(nn.Conv2d):
    """DeepFaceLab's Conv2D: symmetric zero padding of ``k // 2`` (SAME) or none (VALID), with bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, same: bool = True) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2 if same else 0)


def depth_to_space(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """TensorFlow's ``depth_to_space`` (DCR order) on NCHW tensors.

    ``out[n, c, b*h + i, b*w + j] = x[n, (b*i + j) * C + c, h, w]`` where C = channels // b². PyTorch's
    ``pixel_shuffle`` instead reads channel ``c*b² + b*i + j`` (CRD); with DeepFaceLab weights that
    scrambles the image (spec §2.1).
    """
    n, ch, h, w = x.shape
    c = ch // (block * block)
    x = x.reshape(n, block, block, c, h, w)  # (n, i, j, c, h, w)
    x = x.permute(0, 3, 4, 1, 5, 2)  # (n, c, h, i, w, j)
    return x.reshape(n, c, h * block, w * block)


class Downscale(nn.Module):
    """k×k stride-2 conv, then leaky ReLU 0.1 (or x·cos x): halves the resolution (ceil)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5, cosine: bool = False) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_ch, out_ch, kernel_size, stride=2)
        self.act = Activation(0.1, cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(x))


class DownscaleBlock(nn.Module):
    """``n`` Downscales with channels ch·min(2^i, 8); DeepFaceLab's name for the list is ``downs``."""

    def __init__(self, in_ch: int, ch: int, n: int, kernel_size: int = 5, cosine: bool = False) -> None:
        super().__init__()
        layers = []
        for i in range(n):
            out_ch = ch * min(2**i, 8)
            layers.append(Downscale(in_ch, out_ch, kernel_size, cosine))
            in_ch = out_ch
        self.downs = nn.ModuleList(layers)
        self.out_ch = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.downs:
            x = layer(x)
        return x


class Upscale(nn.Module):
    """3×3 conv to 4·out channels, leaky ReLU 0.1 (or x·cos x), then DCR depth-to-space: doubles H, W."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, cosine: bool = False) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_ch, out_ch * 4, kernel_size)
        self.act = Activation(0.1, cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.act(self.conv1(x)), 2)


class ResidualBlock(nn.Module):
    """``y = act(conv1(x)); y = conv2(y); out = act(x + y)`` with leaky ReLU 0.2 (or x·cos x)."""

    def __init__(self, ch: int, kernel_size: int = 3, cosine: bool = False) -> None:
        super().__init__()
        self.conv1 = Conv2d(ch, ch, kernel_size)
        self.conv2 = Conv2d(ch, ch, kernel_size)
        self.act = Activation(0.2, cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        return self.act(x + y)


def pixel_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x * rsqrt(mean(x², features) + eps)`` over the last axis (the flattened encoder output)."""
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps)


def flatten_chw(x: torch.Tensor) -> torch.Tensor:
    """Flatten NCHW to (N, C·H·W) in C, H, W order, which is what DeepFaceLab's flatten produces."""
    return x.reshape(x.shape[0], -1)
