"""Checkpoint file format: atomic writes, weights-only loads, retention, RNG round trips."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from torchsae.train import checkpoint as ck


def _state(step: int, value: float = 1.0) -> dict:
    return {
        "step": step,
        "config": {"model": {"archi": "df", "resolution": 32}},
        "model": {"layer.weight": torch.full((2, 3), value), "layer.bias": torch.zeros(2)},
        "optimizers": {"g": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0, 1]}]}},
        "discriminators": {},
        "scaler": None,
        "rng": {0: ck.capture_rng_state()},
        "data": {0: {"epoch": 3, "order": torch.arange(5)}},
        "metrics": {"loss_a": [0.5, 0.25]},
    }


def test_round_trip_keeps_every_key(tmp_path: Path) -> None:
    path = tmp_path / "models" / "last.pth"
    ck.save_checkpoint(path, _state(7, 2.5))
    loaded = ck.load_checkpoint(path)
    assert loaded["format"] == "torchsae-checkpoint" and loaded["version"] == 2
    assert loaded["task"] == "saehd"
    assert loaded["step"] == 7
    assert torch.equal(loaded["model"]["layer.weight"], torch.full((2, 3), 2.5))
    assert torch.equal(loaded["data"][0]["order"], torch.arange(5))
    assert loaded["metrics"]["loss_a"] == [0.5, 0.25]
    assert loaded["config"]["model"]["archi"] == "df"


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    ck.save_checkpoint(path, _state(1))
    before = path.read_bytes()
    bad = _state(2)
    bad["model"]["layer.weight"][0, 1] = float("nan")
    with pytest.raises(ck.CheckpointError, match="non-finite.*layer.weight"):
        ck.save_checkpoint(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_failure_while_writing_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pth"
    ck.save_checkpoint(path, _state(1))
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, _state(2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_truncated_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    ck.save_checkpoint(path, _state(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="last.pth: not a loadable"):
        ck.load_checkpoint(path)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(ck.CheckpointError, match="other.pth: not a TorchSAE checkpoint"):
        ck.load_checkpoint(other)
    with pytest.raises(ck.CheckpointError, match="missing.pth: checkpoint not found"):
        ck.load_checkpoint(tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/torchsae_evil_marker"),))


def test_load_refuses_code_in_pickles(tmp_path: Path) -> None:
    marker = Path("/tmp/torchsae_evil_marker")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    torch.save({"format": ck.FORMAT, "version": 1, "step": 0, "config": {}, "model": {}, "x": _Evil()}, path)
    with pytest.raises(ck.CheckpointError, match="evil.pth"):
        ck.load_checkpoint(path)
    assert not marker.exists()
    # and a plain pickle (not a torch zip) is refused too
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"format": ck.FORMAT}))
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(raw)


def test_retention_keeps_the_newest_copies(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for step in (10, 20, 30, 40):
        last = ck.save_training_checkpoint(models, _state(step, float(step)), keep=2)
    assert last == models / "last.pth"
    assert [s for s, _ in ck.retained_checkpoints(models)] == [30, 40]
    assert ck.load_checkpoint(models / "step_00000030.pth")["step"] == 30
    assert ck.load_checkpoint(last)["step"] == 40
    # a later save must not alter the retained copy (hard links are replaced, not rewritten)
    ck.save_training_checkpoint(models, _state(50, 50.0), keep=2)
    assert torch.equal(
        ck.load_checkpoint(models / "step_00000040.pth")["model"]["layer.weight"], torch.full((2, 3), 40.0)
    )
    assert ck.find_last_checkpoint(tmp_path) == last
    ck.save_training_checkpoint(models, _state(60), keep=0)
    assert ck.retained_checkpoints(models) == []
    assert ck.find_last_checkpoint(tmp_path / "elsewhere") is None


def test_rng_state_survives_a_weights_only_round_trip(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    path = tmp_path / "rng.pth"
    state = _state(1)
    state["rng"] = {0: ck.capture_rng_state()}
    ck.save_checkpoint(path, state)
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(4),
    )
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ck.restore_rng_state(ck.load_checkpoint(path)["rng"][0])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    assert got[:4] == expected[:4]
    assert torch.equal(got[4], expected[4])


def test_mmap_load_gives_the_same_state(tmp_path: Path) -> None:
    """Resolving a run's config maps the checkpoint instead of reading it (train() reads it once)."""
    path = tmp_path / "c.pth"
    ck.save_checkpoint(path, _state(3, 1.5))
    mapped = ck.load_checkpoint(path, mmap=True)
    assert mapped["config"] == ck.load_checkpoint(path)["config"]
    assert torch.equal(mapped["model"]["layer.weight"], torch.full((2, 3), 1.5))


def _version_1_files(tmp_path: Path) -> dict[str, Path]:
    """Files as the version-1 writers left them: a trainer save and a DeepFaceLab import."""
    trainer_save = {"format": ck.FORMAT, "version": 1, **_state(12, 0.5), "scaler": {}}
    imported = {
        "format": ck.FORMAT,
        "version": 1,
        "step": 40,
        "config": {"model": {"archi": "liae-ud"}},
        "model": {"w": torch.ones(2)},
        "optimizers": {},
        "discriminators": {},
        "metrics": {"skipped_steps": 0, "history": {"loss_a": [], "loss_b": []}},
        "imported_from": {"format": "deepfacelab-saehd", "folder": "/dfl/model", "model_name": "m"},
    }
    paths = {"trainer": tmp_path / "v1_train.pth", "import": tmp_path / "v1_import.pth"}
    torch.save(trainer_save, paths["trainer"])
    torch.save(imported, paths["import"])
    return paths


def test_version_1_files_are_migrated_on_load(tmp_path: Path) -> None:
    paths = _version_1_files(tmp_path)
    trained = ck.read_checkpoint(paths["trainer"])
    assert trained.source_version == 1 and trained.task == "saehd" and trained.step == 12
    assert torch.equal(trained.model["layer.weight"], torch.full((2, 3), 0.5))
    assert trained.rng is not None and trained.data[0]["epoch"] == 3 and trained.scaler == {}
    imported = ck.load_checkpoint(paths["import"])
    assert imported["version"] == 2 and imported["task"] == "saehd" and imported["step"] == 40
    assert imported["imported_from"]["folder"] == "/dfl/model" and "rng" not in imported
    # written again, a migrated file is a version-2 file with the same entries
    again = tmp_path / "again.pth"
    ck.write_checkpoint(again, trained)
    raw = torch.load(again, weights_only=True)
    assert raw["version"] == 2 and raw["step"] == 12 and set(raw) == set(ck.load_checkpoint(paths["trainer"]))


def test_unknown_versions_and_entries_are_refused(tmp_path: Path) -> None:
    future = tmp_path / "future.pth"
    torch.save({"format": ck.FORMAT, "version": 3, "step": 0, "config": {}, "model": {}}, future)
    with pytest.raises(
        ck.CheckpointError, match="future.pth: checkpoint version 3, this TorchSAE reads 1, 2"
    ):
        ck.load_checkpoint(future)
    odd = tmp_path / "odd.pth"
    torch.save({"format": ck.FORMAT, "version": 2, "step": 0, "config": {}, "model": {}, "extra": 1}, odd)
    with pytest.raises(ck.CheckpointError, match="odd.pth: checkpoint has unknown entries extra"):
        ck.load_checkpoint(odd)
    with pytest.raises(ck.CheckpointError, match="without model"):
        ck.save_checkpoint(tmp_path / "x.pth", {"step": 1, "config": {}})
    with pytest.raises(ck.CheckpointError, match="at step -1"):
        ck.write_checkpoint(tmp_path / "x.pth", ck.TrainingCheckpoint(step=-1, config={}, model={}))
    assert not (tmp_path / "x.pth").exists()
