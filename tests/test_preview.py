"""Preview grid layout, mask overlay and loss-curve drawing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from torchsae.config import ModelConfig
from torchsae.models import SAEHD
from torchsae.train import preview as pv


def test_mask_overlay_formula() -> None:
    image = torch.full((1, 3, 2, 2), 0.5)
    mask = torch.tensor([[[[0.0, 1.0], [0.5, 2.0]]]])  # 2.0 is clamped to 1
    out = pv.mask_overlay(image, mask, alpha=0.5)
    # red (BGR channel 2) tint: out = img*(1-a*m) + red*a*m
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.5, 0.5, 0.5]))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.25, 0.25, 0.75]))
    assert torch.allclose(out[0, :, 1, 0], torch.tensor([0.375, 0.375, 0.625]))
    assert torch.allclose(out[0, :, 1, 1], out[0, :, 0, 1])


def test_grid_places_each_column_and_row() -> None:
    n, res, k = 4, 128, len(pv.COLUMNS)
    columns = [torch.full((n, 3, res, res), c / 10.0) for c in range(k)]
    columns[0][2, 1] = 1.0  # row 2 of column 0: green channel fully on
    grid = pv.compose_grid(columns)
    header = grid.shape[0] - n * res
    assert grid.shape == (header + n * res, k * res, 3) and grid.dtype == np.uint8
    assert header >= 18
    body = grid[header:]
    for c in range(k):
        expected = int(c / 10.0 * 255 + 0.5)
        cell = body[0:res, c * res : (c + 1) * res]
        assert (cell == expected).all(), c
    assert (body[2 * res : 3 * res, 0:res, 1] == 255).all()
    assert (body[2 * res : 3 * res, 0:res, 0] == 0).all()
    # the header holds dark label text over a white strip, somewhere above every column
    for c in range(k):
        strip = grid[:header, c * res : (c + 1) * res]
        assert strip.min() < 128 and strip.max() == 255


def test_small_cells_are_enlarged_pixel_for_pixel() -> None:
    columns = [torch.rand(2, 3, 32, 32) for _ in pv.COLUMNS]
    grid = pv.compose_grid(columns, min_cell=128)
    header = grid.shape[0] - 2 * 128
    assert grid.shape[1] == len(pv.COLUMNS) * 128
    small = pv.compose_grid(columns, min_cell=0)
    assert np.array_equal(grid[header::4, ::4], small[small.shape[0] - 64 :])


def test_preview_columns_come_from_the_model() -> None:
    torch.manual_seed(0)
    model = SAEHD(ModelConfig(archi="df", resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4))
    samples = {
        "target_a": torch.rand(4, 3, 32, 32),
        "mask_a": torch.rand(4, 1, 32, 32),
        "target_b": torch.rand(4, 3, 32, 32),
        "mask_b": torch.rand(4, 1, 32, 32),
    }
    model.train()
    cols = pv.preview_columns(model, samples)
    assert model.training  # restored afterwards
    assert len(cols) == len(pv.COLUMNS) == 9
    with torch.no_grad():
        out = model(samples["target_a"], samples["target_b"])
        swapped, _, _ = model.swap(samples["target_a"])
    assert torch.equal(cols[0], samples["target_a"])
    assert torch.allclose(cols[1], pv.mask_overlay(samples["target_a"], samples["mask_a"]))
    assert torch.allclose(cols[2], out["pred_aa"], atol=1e-6)
    assert torch.allclose(cols[5], out["pred_bb"], atol=1e-6)
    assert torch.allclose(cols[6], swapped, atol=1e-5)  # the A->B column is the model's swap
    # the predicted masks, overlaid on A like the dataset mask: A->A (pred_dst_dstm) and the swap's
    assert torch.allclose(cols[7], pv.mask_overlay(samples["target_a"], out["pred_aa_mask"]), atol=1e-5)
    assert torch.allclose(cols[8], pv.mask_overlay(samples["target_a"], out["swap_ab_mask"]), atol=1e-5)


def test_columns_keep_the_seed_order_and_append_the_predicted_masks() -> None:
    assert pv.COLUMNS[:7] == (
        "A_original",
        "A_xseg_mask_overlay",
        "A_recon",
        "B_original",
        "B_xseg_mask_overlay",
        "B_recon",
        "A_to_B",
    )
    assert pv.COLUMNS[7:] == ("A_pred_mask", "A_to_B_mask")


def test_loss_curve_draws_each_series(tmp_path: Path) -> None:
    history = {
        "loss_a": [(s, 1.0 / (s + 1)) for s in range(0, 100, 10)],
        "loss_b": [(s, 0.5) for s in range(0, 100, 10)],
    }
    image = pv.loss_curve_image(history, width=320, height=160)
    assert image.shape == (160, 320, 3)
    blue_ish = (image[..., 0] > 200) & (image[..., 1] < 200) & (image[..., 2] < 60)  # colour of series 0
    orange = (image[..., 2] > 200) & (image[..., 1] > 100) & (image[..., 1] < 180) & (image[..., 0] < 60)
    assert blue_ish.sum() > 50 and orange.sum() > 50
    # loss_b is constant: its line is horizontal, so its pixels span few rows inside the plot
    rows = np.nonzero(orange[24:-24, 60:].any(axis=1))[0]
    assert rows.max() - rows.min() <= 3
    empty = pv.loss_curve_image({"loss_a": []})
    assert empty.shape == (240, 640, 3)
    path = tmp_path / "previews" / "loss.png"
    pv.write_png(path, image)
    assert np.array_equal(cv2.imread(str(path)), image)


@pytest.mark.parametrize(
    ("step", "name"),
    [(0, "step_00000000.png"), (500, "step_00000500.png"), (123456, "step_00123456.png")],
)
def test_preview_names_sort_by_step(step: int, name: str) -> None:
    assert pv.preview_path(Path("logs/previews"), step) == Path("logs/previews") / name


def test_preview_names_sort_past_99999_steps() -> None:
    steps = [99_999, 100_000, 200_000, 5, 12_345_678]
    names = [pv.preview_path(Path("p"), s).name for s in steps]
    assert sorted(names) == [pv.preview_path(Path("p"), s).name for s in sorted(steps)]
