"""Named data sides: SAEHD's A/B from the config, and a three-side stream built from the same code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_batch import RES, RecordingIdentity, _config
from test_loaders_support import make_faceset

from pipelines.augment import STREAM_HSV, Augmenter, generator_for
from pipelines.batch import BATCH_KEYS, TrainBatches, make_train_batches
from pipelines.color import hsv_shift_amounts
from pipelines.sides import DataSide, batch_keys, check_sides, data_sides, index_keys, saehd_sides
from torchsae.config import Config, DataConfig, TrainConfig
from torchsae.errors import TorchSAEError

pytestmark = pytest.mark.filterwarnings("ignore:.*crops but the model is:UserWarning")


def _three_sides(tmp: Path) -> tuple[Config, tuple[DataSide, ...]]:
    """SAEHD's A and B from the test config, plus a side C re-coloured toward A with its own flips/HSV."""
    cfg = _config(tmp, ct_mode="none")
    make_faceset(tmp / "C", 4, size=128)
    side_a, side_b = data_sides(cfg)
    side_c = DataSide(
        "c", 2, str(tmp / "C"), flip=True, warp=False, hsv_power=0.2, ct_source="a", ct_mode="rct"
    )
    return cfg, (side_a, side_b, side_c)


def test_saehd_sides_are_todays_a_and_b_rules() -> None:
    data = DataConfig(data_dir_a="/A", data_dir_b="/B", random_hsv_power=0.1, ct_mode="rct")
    side_a, side_b = saehd_sides(data)
    assert (side_a.name, side_a.key, side_a.data_dir, side_a.option) == ("a", 0, "/A", "data_dir_a")
    assert (side_b.name, side_b.key, side_b.data_dir, side_b.option) == ("b", 1, "/B", "data_dir_b")
    assert (side_a.flip, side_b.flip) == (True, False)  # DataConfig's defaults
    assert side_a.hsv_power == 0.0 and side_b.hsv_power == 0.1  # HSV on B only
    assert not side_a.colour_transfer and side_b.colour_transfer and side_b.ct_source == "a"
    assert not saehd_sides(DataConfig())[1].colour_transfer  # ct_mode none: no source
    assert BATCH_KEYS == ("warped_a", "target_a", "mask_a", "em_a", "warped_b", "target_b", "mask_b", "em_b")
    assert index_keys() == ("index_a", "index_b")


def test_data_sides_take_pretrainings_forced_policy() -> None:
    cfg = Config(
        data=DataConfig(data_dir_a="/A", data_dir_b="/B", pretrain_dir="/generic", ct_mode="sot"),
        train=TrainConfig(pretrain=True),
    )
    cfg.data.random_flip_b, cfg.data.random_hsv_power = False, 0.2
    for side in data_sides(cfg):
        assert side.data_dir == "/generic" and side.flip and not side.warp and side.uniform_yaw
        assert side.hsv_power == 0.0 and not side.colour_transfer
    cfg.train.pretrain = False
    assert [side.data_dir for side in data_sides(cfg)] == ["/A", "/B"]


def test_sides_are_checked() -> None:
    side = DataSide("a", 0)
    with pytest.raises(ValueError, match="unique"):
        check_sides((side, replace(side, name="b")))
    with pytest.raises(ValueError, match="identifier"):
        check_sides((replace(side, name="step"),))
    with pytest.raises(ValueError, match="not a side before it"):  # the reference must be drawn first
        check_sides((replace(side, ct_source="b", ct_mode="rct"), DataSide("b", 1)))


def test_three_side_stream_keys_and_policy(tmp_path: Path) -> None:
    cfg, sides = _three_sides(tmp_path)
    aug = RecordingIdentity()
    stream = make_train_batches(cfg, augmenter=aug, progress=False, sides=sides)
    assert isinstance(stream, TrainBatches) and list(stream.loaders) == ["a", "b", "c"]
    batch = next(stream)
    assert list(batch) == list(batch_keys("abc") + index_keys("abc"))
    assert batch["target_c"].shape == (3, 3, RES, RES) and batch["index_c"].dtype == torch.int64
    call_a, call_b, call_c = aug.calls
    assert [call["side"] for call in aug.calls] == ["a", "b", "c"]
    assert call_a["ct_reference"] is None and call_b["ct_reference"] is None  # ct_mode none for A/B
    assert call_c["ct_reference"] is call_a["images"]  # C's policy: re-coloured toward A's raw faces
    state = stream.state_dict()
    assert sorted(state) == ["a", "b", "c", "step"] and state["step"] == 1
    stream.close()


def test_third_side_leaves_a_and_b_as_they_were(tmp_path: Path) -> None:
    cfg, sides = _three_sides(tmp_path)
    two = make_train_batches(cfg, progress=False)
    three = make_train_batches(cfg, progress=False, sides=sides)
    for _ in range(2):
        want, got = next(two), next(three)
        for key in BATCH_KEYS + index_keys():
            assert torch.equal(got[key], want[key]), key
    state = three.state_dict()
    expected = [next(three) for _ in range(2)]
    resumed = make_train_batches(cfg, progress=False, sides=sides)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert all(torch.equal(got[key], want[key]) for key in want)
    for stream in (two, three, resumed):
        stream.close()


def test_a_sides_policy_drives_its_augmentation() -> None:
    side_c = DataSide("c", 2, flip=True, hsv_power=0.2)
    aug = Augmenter(RES, DataConfig(), seed=4, sides=(*saehd_sides(DataConfig()), side_c))
    flips = torch.cat([aug.params(50, step=s, rank=0, side="c").flip for s in range(4)])
    assert flips.any()  # C flips, B (the default policy) does not
    assert not torch.cat([aug.params(50, step=s, rank=0, side="b").flip for s in range(4)]).any()
    # C draws from its own key: not A's, not B's
    assert not torch.equal(
        aug.params(8, step=0, rank=0, side="c").cell, aug.params(8, step=0, rank=0, side="a").cell
    )
    drawn = hsv_shift_amounts(4, 0.2, generator_for(4, 0, 0, side_c.key, STREAM_HSV))
    assert drawn.abs().sum() > 0
    with pytest.raises(KeyError):
        aug.params(4, step=0, rank=0, side="d")


def test_missing_folder_names_the_sides_option(tmp_path: Path) -> None:
    cfg, sides = _three_sides(tmp_path)
    with pytest.raises(TorchSAEError, match="side c's data_dir is not set"):
        make_train_batches(cfg, progress=False, sides=(*sides[:2], replace(sides[2], data_dir=None)))
