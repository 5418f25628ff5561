"""The swap score (against scikit-image and hand formulas) and the end-to-end demo on a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from torchsae.demo import make_demo_faceset
from torchsae.demo import score as sc


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo_faces")
    return make_demo_faceset(root, 2, seed=3, truth_count=3).truth_dir


def test_masked_psnr_matches_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    pred, truth = torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen)
    mask = (torch.rand(2, 1, 16, 16, generator=gen) > 0.5).float()
    expected = []
    for i in range(2):
        sel = mask[i, 0].numpy().astype(bool)
        diff = (pred[i].numpy() - truth[i].numpy())[:, sel]
        expected.append(10 * np.log10(1.0 / np.mean(diff.astype(np.float64) ** 2)))
    assert sc.masked_psnr(pred, truth, mask) == pytest.approx(np.mean(expected), rel=1e-5)


def test_masked_ssim_matches_scikit_image() -> None:
    gen = torch.Generator().manual_seed(1)
    truth = torch.rand(2, 3, 48, 48, generator=gen)
    pred = (truth + 0.2 * torch.rand(2, 3, 48, 48, generator=gen)).clamp(0, 1)
    mask = torch.zeros(2, 1, 48, 48)
    mask[:, :, 8:40, 12:36] = 1.0
    expected = []
    for i in range(2):
        _, smap = structural_similarity(
            truth[i].permute(1, 2, 0).double().numpy(),
            pred[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
            full=True,
        )
        smap = smap.mean(axis=2)[5:-5, 5:-5]  # the valid region, averaged over channels
        sel = mask[i, 0].numpy()[5:-5, 5:-5].astype(bool)
        expected.append(smap[sel].mean())
    assert sc.masked_ssim(pred, truth, mask) == pytest.approx(np.mean(expected), abs=1e-5)


def test_truth_pairs_score_perfectly_against_themselves(truth: Path) -> None:
    faces_a, faces_b, masks = sc.load_truth(truth, 32)
    assert faces_a.shape == faces_b.shape == (3, 3, 32, 32) and masks.shape == (3, 1, 32, 32)
    assert 0.05 < float(masks.mean()) < 0.95  # the face covers part of the crop
    perfect = sc.score_images(faces_b, faces_b, masks)
    assert perfect.ssim == pytest.approx(1.0, abs=1e-5) and perfect.psnr > 100
    floor = sc.no_swap_score(truth, 32)
    assert floor.psnr < 40 and floor.ssim < 1.0  # A and B really differ inside the mask
    table = sc.format_scores({"no swap": floor, "perfect": perfect})
    assert "no swap" in table and f"{floor.ssim:.4f}" in table


def test_swap_score_runs_the_models_swap(truth: Path) -> None:
    from torchsae.config import ModelConfig
    from torchsae.models import SAEHD

    torch.manual_seed(0)
    model = SAEHD(ModelConfig(archi="df", resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4))
    got = sc.swap_score(model, truth)
    faces_a, faces_b, masks = sc.load_truth(truth, 32)
    with torch.no_grad():
        swapped = model.swap(faces_a)[0]
    expected = sc.score_images(swapped.clamp(0, 1), faces_b, masks)
    assert got.psnr == pytest.approx(expected.psnr, rel=1e-6) and got.ssim == pytest.approx(
        expected.ssim, rel=1e-6
    )
    assert got.samples == 3


def test_demo_end_to_end_on_a_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchsae.demo.run import run_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_demo(out=tmp_path / "demo", count=6, steps=2, seed=0, resolution=32)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    run = tmp_path / "demo"
    assert (run / "models" / "last.pth").is_file() and (run / "models" / "config.yaml").is_file()
    assert list((run / "logs" / "previews").glob("step_*.png"))
    saved = json.loads((run / "score.json").read_text())
    assert saved["steps"] == 2 == summary["steps"]
    labels = list(saved["scores"])
    assert labels == ["no swap (A's own face)", "untrained model (step 0)", "trained model (step 2)"]
    for label in labels:
        assert label in out
    merge = saved["merge"]
    assert merge["faces"] > 0 and "merged" in out
    assert sorted(p.name for p in (run / "merged").iterdir()) == sorted(
        p.name for p in (run / "faceset" / "frames").iterdir()
    )
    if merge["video"]:
        assert Path(merge["video"]).is_file()
    if "exported" in saved["export"]:
        assert (run / "models" / "swap.onnx").is_file()
    else:
        assert saved["export"].startswith("skipped ONNX export")
