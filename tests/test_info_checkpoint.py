"""``torchsae info checkpoint FILE|RUN_DIR``: step, config summary, last losses, format version, and the
run folder's last.pth, retained copies and snapshots (text and --json)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from torchsae.cli import main
from torchsae.config import Config
from torchsae.train import checkpoint as ck


def _state(step: int, **extra) -> dict:
    cfg = Config()
    cfg.data.data_dir_a, cfg.data.data_dir_b = "/faces/A", "/faces/B"
    return {
        "step": step,
        "config": cfg.to_dict(),
        "model": {"w": torch.ones(3, 4), "b": torch.zeros(5)},
        "optimizers": {"model": {}},
        "metrics": {
            "skipped_steps": 2,
            "elapsed_s": 3725.0,
            "history": {"loss_a": [[step - 10, 0.5], [step, 0.25]], "loss_b": [[step, 0.125]]},
        },
        "rng": {0: {}, 1: {}},
        **extra,
    }


def _run(tmp_path: Path) -> Path:
    models = tmp_path / "run" / "models"
    for step in (1000, 2000, 3000):
        ck.save_training_checkpoint(models, _state(step), keep=2)
    (models / "snapshots").mkdir()
    ck.save_checkpoint(models / "snapshots" / "step_00000500.pth", _state(500))
    ck.save_checkpoint(models / "snapshots" / "step_00100000.pth", _state(100_000))
    return tmp_path / "run"


def test_run_folder_text(tmp_path: Path) -> None:
    run = _run(tmp_path)
    result = CliRunner().invoke(main, ["info", "checkpoint", str(run)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{run / 'models' / 'last.pth'}: step 3,000 (torchsae-checkpoint version 2)" in out
    assert "SAEHD liae-ud 128 px, face type wf" in out and "17 parameters" in out
    assert "A /faces/A, B /faces/B" in out
    assert "last losses  A 0.2500 (step 3000), B 0.1250 (step 3000)" in out
    assert "2 skipped steps; trained for 1:02:05; saved by 2 rank(s)" in out
    assert "copies       2: step 2,000, step 3,000" in out
    assert "snapshots    2: step 500, step 100,000" in out
    assert str(run / "models" / "snapshots" / "step_00100000.pth") in out


def test_json_and_file_targets(tmp_path: Path) -> None:
    run = _run(tmp_path)
    result = CliRunner().invoke(
        main, ["info", "checkpoint", str(run / "models" / "step_00002000.pth"), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["step"] == 2000 and doc["version"] == 2 and doc["format"] == "torchsae-checkpoint"
    assert doc["model"]["archi"] == "liae-ud" and doc["params"] == 17
    assert doc["losses"] == {"loss_a": [2000, 0.25], "loss_b": [2000, 0.125]}
    assert [c["step"] for c in doc["checkpoints"]["copies"]] == [2000, 3000]
    assert [c["step"] for c in doc["checkpoints"]["snapshots"]] == [500, 100_000]
    assert doc["checkpoints"]["last"]["path"].endswith("last.pth")
    # a loose file (not inside models/) has no run folder to list
    loose = tmp_path / "loose.pth"
    ck.save_checkpoint(loose, _state(7, metrics=None, rng=None, imported_from={"folder": "/dfl/m"}))
    doc = json.loads(CliRunner().invoke(main, ["info", "checkpoint", str(loose), "--json"]).output)
    assert doc["checkpoints"] is None and doc["losses"] == {"loss_a": None, "loss_b": None}
    text = CliRunner().invoke(main, ["info", "checkpoint", str(loose)]).output
    assert "imported     from DeepFaceLab /dfl/m" in text and "last losses  none recorded" in text
    assert "no RNG/data state" in text


def test_without_snapshots_folder_and_errors(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    ck.save_training_checkpoint(models, _state(10), keep=0)
    out = CliRunner().invoke(main, ["info", "checkpoint", str(models)]).output  # the models folder works too
    assert "copies       none" in out and "snapshots    none" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["info", "checkpoint", str(empty)])
    assert result.exit_code != 0 and "no models/last.pth here" in result.output
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, ["info", "checkpoint", str(bad)])
    assert result.exit_code != 0 and "not a loadable TorchSAE checkpoint" in result.output
