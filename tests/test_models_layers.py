"""SAEHD building blocks against formulas written out by hand (spec §2.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchsae.models.discriminators import ConvTranspose2dSame, find_patch_layers, receptive_field
from torchsae.models.layers import (
    Conv2d,
    Downscale,
    ResidualBlock,
    Upscale,
    cosine_act,
    depth_to_space,
    glorot_init_,
    pixel_norm,
)


def _dcr_reference(x: torch.Tensor, b: int) -> torch.Tensor:
    """TF depth_to_space, element by element: out[c, b*h+i, b*w+j] = in[(b*i+j)*C + c, h, w]."""
    n, ch, h, w = x.shape
    c_out = ch // (b * b)
    out = torch.empty(n, c_out, h * b, w * b)
    for c in range(c_out):
        for i in range(b):
            for j in range(b):
                out[:, c, i::b, j::b] = x[:, (b * i + j) * c_out + c]
    return out


@pytest.mark.parametrize("block", [2, 3])
def test_depth_to_space_is_tf_dcr_not_pixel_shuffle(block: int) -> None:
    x = torch.randn(2, 3 * block * block, 4, 5)
    y = depth_to_space(x, block)
    assert torch.equal(y, _dcr_reference(x, block))
    assert not torch.allclose(y, F.pixel_shuffle(x, block))


def test_depth_to_space_single_channel_is_pixel_shuffle() -> None:
    """With one output channel DCR and CRD coincide: a sanity check of the reference itself."""
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(depth_to_space(x, 2), F.pixel_shuffle(x, 2))


@pytest.mark.parametrize("size", [16, 17, 3, 2])
def test_downscale_is_symmetric_pad_then_valid_conv(size: int) -> None:
    """5×5 stride 2: pad 2 on every side (DeepFaceLab), out = ceil(in/2), lrelu 0.1."""
    torch.manual_seed(0)
    layer = Downscale(3, 4)
    x = torch.randn(2, 3, size, size)
    ref = F.conv2d(F.pad(x, (2, 2, 2, 2)), layer.conv1.weight, layer.conv1.bias, stride=2)
    ref = torch.where(ref > 0, ref, 0.1 * ref)
    out = layer(x)
    assert out.shape[-1] == math.ceil(size / 2)
    torch.testing.assert_close(out, ref)


def test_upscale_conv_lrelu_then_dcr() -> None:
    torch.manual_seed(0)
    layer = Upscale(5, 3)
    x = torch.randn(2, 5, 4, 4)
    y = F.conv2d(x, layer.conv1.weight, layer.conv1.bias, padding=1)
    y = torch.where(y > 0, y, 0.1 * y)
    out = layer(x)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out, _dcr_reference(y, 2))


@pytest.mark.parametrize("cosine", [False, True])
def test_residual_block_formula(cosine: bool) -> None:
    torch.manual_seed(0)
    block = ResidualBlock(4, cosine=cosine)
    x = torch.randn(2, 4, 6, 6)

    def act(v: torch.Tensor) -> torch.Tensor:
        return v * torch.cos(v) if cosine else torch.where(v > 0, v, 0.2 * v)

    y = act(F.conv2d(x, block.conv1.weight, block.conv1.bias, padding=1))
    y = F.conv2d(y, block.conv2.weight, block.conv2.bias, padding=1)
    torch.testing.assert_close(block(x), act(x + y))


def test_pixel_norm_formula() -> None:
    x = torch.randn(3, 50) * 4
    expected = x / torch.sqrt((x**2).mean(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(pixel_norm(x), expected)
    torch.testing.assert_close((pixel_norm(x) ** 2).mean(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_cosine_act() -> None:
    x = torch.tensor([0.0, 1.0, -2.0, math.pi])
    torch.testing.assert_close(
        cosine_act(x), torch.tensor([0.0, math.cos(1.0), -2 * math.cos(-2.0), -math.pi])
    )


def test_glorot_uniform_bounds_and_zero_bias() -> None:
    """Kernel values lie in ±sqrt(6/(fan_in+fan_out)) with TF's fans and fill it (uniform variance)."""
    torch.manual_seed(0)
    conv = Conv2d(32, 64, 5)
    dense = torch.nn.Linear(300, 200)
    glorot_init_(torch.nn.ModuleList([conv, dense]))
    for w, fan_in, fan_out in ((conv.weight, 25 * 32, 25 * 64), (dense.weight, 300, 200)):
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max() <= limit
        assert w.abs().max() > 0.99 * limit
        assert abs(w.var().item() - limit**2 / 3) < 0.05 * limit**2 / 3
    assert torch.count_nonzero(conv.bias) == 0 and torch.count_nonzero(dense.bias) == 0


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_transpose_same_is_adjoint_of_tf_same_conv(stride: int) -> None:
    """TF conv2d_transpose(SAME) is the gradient of TF conv2d(SAME), whose padding is k - s split
    floor-first (top/left), the extra pixel at the bottom/right."""
    torch.manual_seed(0)
    layer = ConvTranspose2dSame(6, 4, 3, stride)
    torch.nn.init.zeros_(layer.bias)
    h = 5
    x = torch.randn(2, 6, h, h)
    big = torch.zeros(2, 4, h * stride, h * stride, requires_grad=True)
    total = max(3 - stride, 0)
    padded = F.pad(big, (total // 2, total - total // 2, total // 2, total - total // 2))
    forward = F.conv2d(padded, layer.weight, stride=stride)  # (2, 6, h, h): TF SAME conv, out = in/s
    assert forward.shape == x.shape
    (grad,) = torch.autograd.grad(forward, big, grad_outputs=x)
    out = layer(x)
    assert out.shape == (2, 4, h * stride, h * stride)
    torch.testing.assert_close(out, grad)


def test_receptive_field_and_patch_layer_search() -> None:
    assert receptive_field((2, 2, 2)) == 3 + 2 * 2 + 2 * 4
    assert receptive_field((2,)) == 3
    assert find_patch_layers(16) == [(3, 2)] * 3
    assert find_patch_layers(32) == [(3, 2)] * 4
    assert find_patch_layers(48) == [(3, 2), (3, 2), (3, 2), (3, 1), (3, 2)]
    assert find_patch_layers(3) == [(3, 2)]
