"""The Batch contract from both sides, masks gathered by sample index, resume, colour-transfer wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_loaders_support import DFL_FACES, face_bytes, make_faceset

import pipelines.dali_loader as dali_mod
from pipelines.batch import BATCH_KEYS, SyntheticBatches, TrainBatches, make_train_batches
from pipelines.decode import decode_sample
from torchsae.config import Config, DataConfig, ModelConfig, TrainConfig
from torchsae.errors import TorchSAEError

RES = 64
# the test facesets mix DFL's full_face fixture into whole_face ones; the warning has its own test
pytestmark = pytest.mark.filterwarnings("ignore:.*crops but the model is:UserWarning")


def _config(tmp: Path, backend: str = "torch", ct_mode: str = "none") -> Config:
    if not (tmp / "A").exists():
        make_faceset(tmp / "A", 6, size=128)
        make_faceset(tmp / "B", 5, size=128)
    data = DataConfig(
        data_dir_a=str(tmp / "A"), data_dir_b=str(tmp / "B"), backend=backend, workers=0, ct_mode=ct_mode
    )
    return Config(model=ModelConfig(resolution=RES), data=data, train=TrainConfig(batch_size=3, seed=7))


class RecordingIdentity:
    """A test double for the Augmenter: no geometry, uint8 → [0, 1]; records what it was given."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, images, masks, *, step, rank, side, ct_reference=None):
        self.calls.append(
            {"side": side, "step": step, "rank": rank, "ct_reference": ct_reference, "images": images}
        )
        image = images.float() / 255
        mask = masks.float() / 255
        return {"warped": image, "target": image, "mask": mask[:, 0:1], "em": mask[:, 1:2]}


def _check_contract(batch: dict, batch_size: int) -> None:
    assert set(batch) == set(BATCH_KEYS) | {"index_a", "index_b"}
    for key in BATCH_KEYS:
        channels = 3 if key.startswith(("warped", "target")) else 1
        value = batch[key]
        assert value.shape == (batch_size, channels, RES, RES), key
        assert value.dtype == torch.float32, key
        assert float(value.min()) >= 0.0 and float(value.max()) <= 1.0, key
    for key in ("index_a", "index_b"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (batch_size,)


def test_masks_and_images_come_from_the_sampled_files(tmp_path: Path) -> None:
    aug = RecordingIdentity()
    batches = make_train_batches(_config(tmp_path), augmenter=aug, progress=False)
    for _ in range(3):
        batch = next(batches)
        _check_contract(batch, 3)
        for side in ("a", "b"):
            index = batches.indexes[side]
            rows = batch[f"index_{side}"].numpy()
            expected_masks = np.asarray(index.masks)[rows].astype(np.float32) / 255
            np.testing.assert_array_equal(batch[f"mask_{side}"].numpy(), expected_masks[:, 0:1])
            np.testing.assert_array_equal(batch[f"em_{side}"].numpy(), expected_masks[:, 1:2])
            for image, row in zip(batch[f"target_{side}"], rows, strict=True):
                decoded = decode_sample(Path(index.paths[row]).read_bytes(), RES, index.recrop[row])
                np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), decoded)
    assert [c["step"] for c in aug.calls] == [0, 0, 1, 1, 2, 2]
    assert all(c["ct_reference"] is None for c in aug.calls)


def test_colour_transfer_gets_side_a_images(tmp_path: Path) -> None:
    aug = RecordingIdentity()
    batches = make_train_batches(_config(tmp_path, ct_mode="rct"), augmenter=aug, progress=False)
    next(batches)
    side_a, side_b = aug.calls
    assert side_a["ct_reference"] is None and side_b["ct_reference"] is side_a["images"]


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param("dali", marks=pytest.mark.skipif(not dali_mod.dali_available(), reason="no DALI")),
    ],
)
def test_real_augmenter_gives_the_batch_contract(tmp_path: Path, backend: str) -> None:
    if backend == "dali":  # one face type: a faceset that needs re-cropping falls back to the DataLoader
        whole_face = next(p for p in DFL_FACES if "_wf_" in p.name)
        for side, count in (("A", 6), ("B", 5)):
            (tmp_path / side).mkdir()
            for number in range(count):
                face = face_bytes(number, 128, source=whole_face)
                (tmp_path / side / f"face_{number:03d}.jpg").write_bytes(face)
    batches = make_train_batches(_config(tmp_path, backend=backend), progress=False)
    if backend == "dali":
        assert all(isinstance(loader, dali_mod.DaliLoader) for loader in batches.loaders.values())
    _check_contract(next(batches), 3)
    batches.close()


def test_resume_gives_identical_batches(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    first = make_train_batches(cfg, progress=False)
    for _ in range(3):
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(2)]
    second = make_train_batches(cfg, progress=False)
    second.load_state_dict(state)
    for want in expected:
        got = next(second)
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_synthetic_backend(tmp_path: Path) -> None:
    cfg = _config(tmp_path, backend="synthetic")
    batches = make_train_batches(cfg)
    assert isinstance(batches, SyntheticBatches)
    one, two, three = next(batches), next(batches), next(batches)
    _check_contract(one, 3)
    assert not torch.equal(one["warped_a"], two["warped_a"]) and torch.equal(
        one["warped_a"], three["warped_a"]
    )
    assert batches.state_dict() == {"step": 3}


def test_missing_side_is_a_clear_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.data.data_dir_b = None
    with pytest.raises(TorchSAEError, match="data_dir_b"):
        make_train_batches(cfg, progress=False)


def test_sides_draw_different_orders(tmp_path: Path) -> None:
    batches = make_train_batches(_config(tmp_path), augmenter=RecordingIdentity(), progress=False)
    assert isinstance(batches, TrainBatches)
    orders = [next(batches) for _ in range(2)]
    a = torch.cat([b["index_a"] for b in orders])[:5].tolist()
    b = torch.cat([b["index_b"] for b in orders])[:5].tolist()
    assert a != b


def test_face_type_mismatch_is_reported(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"1 of 6 faces are full_face crops but the model is whole_face"):
        make_train_batches(_config(tmp_path), augmenter=RecordingIdentity(), progress=False)
