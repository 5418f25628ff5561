"""The backend table and the one function that decides (and announces) the backend; the one synthetic
batch generator."""

from __future__ import annotations

import warnings

import pytest
import torch

import pipelines.dali_loader as dali_mod
from pipelines.backends import BACKEND_NAMES, LOADER_BACKENDS, choose_backend
from pipelines.batch import SyntheticBatches
from pipelines.synthetic import synthetic_batch, synthetic_batches
from torchsae import config
from torchsae.errors import TorchSAEError


def test_one_vocabulary() -> None:
    assert config.BACKENDS == BACKEND_NAMES == ("auto", "dali", "torch", "synthetic")
    assert set(LOADER_BACKENDS) == set(BACKEND_NAMES) - {"synthetic"}
    with pytest.raises(TorchSAEError, match="backend 'nope': must be one of auto, dali, torch, synthetic"):
        choose_backend("nope", "cpu")


def test_choices_without_a_fallback_are_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dali_mod, "dali_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_backend("synthetic", "cuda") == "synthetic"
        assert choose_backend("torch", "cuda", uniform_yaw=True) == "torch"
        assert choose_backend("auto", "cpu") == "torch"
        assert choose_backend("auto", "cuda") == "dali"
        assert choose_backend("dali", "cpu") == "dali"  # DALI's CPU pipeline


@pytest.mark.parametrize(
    ("requested", "kwargs", "installed", "message"),
    [
        ("dali", {"uniform_yaw": True}, True, "uniform yaw sampling uses the DataLoader backend"),
        ("auto", {"uniform_yaw": True}, True, "uniform yaw sampling uses the DataLoader backend"),
        ("dali", {"recrop_source": "/faces/A"}, True, "/faces/A: .* re-cropped by the DataLoader"),
        ("auto", {}, False, "NVIDIA DALI is not installed"),
    ],
)
def test_every_fallback_is_announced_in_one_line(
    monkeypatch: pytest.MonkeyPatch, requested: str, kwargs: dict, installed: bool, message: str
) -> None:
    monkeypatch.setattr(dali_mod, "dali_available", lambda: installed)
    with pytest.warns(UserWarning, match=f"backend {requested} -> torch: {message}") as record:
        assert choose_backend(requested, "cuda", **kwargs) == "torch"
    assert len(record) == 1 and "\n" not in str(record[0].message)


def test_one_synthetic_generator() -> None:
    first, second = synthetic_batches(2, 3, 16, "cpu", seed=5)
    assert torch.equal(synthetic_batch(3, 16, "cpu", seed=5)["warped_a"], first["warped_a"])
    assert not torch.equal(first["warped_a"], second["warped_a"])
    assert first["mask_b"].shape == (3, 1, 16, 16) and first["index_a"].tolist() == [0, 1, 2]
    stream = SyntheticBatches(3, 16, "cpu", seed=5)
    for expected in (first, second, first):  # a pool of two, cycled
        batch = next(stream)
        assert all(torch.equal(batch[k], expected[k]) for k in expected)
