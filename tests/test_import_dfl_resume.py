"""``torchsae train --resume`` continues an imported DeepFaceLab model at its iteration.

The real fixture (iteration 12345) is imported, then trained for 2 steps on a tiny demo faceset at
res 64. The step count continues from 12345, and the first AdaBelief step really uses DeepFaceLab's
moments: with the same weights and batch, m after one step differs from a zero-moment start by exactly
β1·m0 (m ← β1·m + (1−β1)·g, spec §4).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_import_dfl import ITERATION, unpack_fixture
from test_train_support import make_faceset

from torchsae.cli.train import train_cmd
from torchsae.convert.dfl_import import import_dfl_model
from torchsae.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(checkpoint: Path, faces: tuple[Path, Path], max_steps: int) -> str:
    args = ["--resume", str(checkpoint), "--data-dir-a", str(faces[0]), "--data-dir-b", str(faces[1])]
    args += ["--max-steps", str(max_steps), "--save-interval", "1", "--keep", "3", "--log-interval", "1"]
    args += ["--workers", "0", "--backend", "torch", "--device", "cpu"]
    result = CliRunner().invoke(train_cmd, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_training_resumes_from_the_imported_step(tmp_path: Path) -> None:
    faces = make_faceset(tmp_path / "faces", count=4)
    imported = tmp_path / "run" / "models" / "imported.pth"
    import_dfl_model(unpack_fixture(tmp_path / "dfl"), imported)
    start = load_checkpoint(imported)

    text = _train(imported, faces, ITERATION + 2)
    assert f"Resuming from {imported} at step {ITERATION}" in text
    assert "fresh import from DeepFaceLab" in text and "world size changed" not in text
    assert f"Target step {ITERATION + 2} reached." in text
    models = tmp_path / "run" / "models"
    last = load_checkpoint(models / "last.pth")
    assert last["step"] == ITERATION + 2
    assert sorted(p.name for p in models.glob("step_*.pth")) == ["step_00012346.pth", "step_00012347.pth"]
    assert last["config"]["model"] == start["config"]["model"]
    # DeepFaceLab's own options ride along, so export-dfl writes them back after training
    assert last["imported_from"] == start["imported_from"] and start["imported_from"]["options"]
    assert any(not torch.equal(last["model"][k], start["model"][k]) for k in start["model"])

    # the same first step from the same weights without DeepFaceLab's moments
    zeroed = tmp_path / "zero" / "models" / "imported.pth"
    save_checkpoint(zeroed, {**start, "optimizers": {}})
    _train(zeroed, faces, ITERATION + 1)
    with_moments = load_checkpoint(models / "step_00012346.pth")["optimizers"]["model"]["state"]
    without = load_checkpoint(zeroed.parent / "last.pth")["optimizers"]["model"]["state"]
    m0 = start["optimizers"]["model"]["state"]
    assert set(with_moments) == set(without) == set(m0)
    for index in m0:
        expected = 0.9 * m0[index]["exp_avg"]
        diff = with_moments[index]["exp_avg"] - without[index]["exp_avg"]
        # float32 rounding of m·β1 + g·(1−β1) only; a misplaced moment is off by ~1e-3 (m0's scale)
        torch.testing.assert_close(diff, expected, atol=5e-8, rtol=1e-4)
    assert max(float(s["exp_avg"].abs().max()) for s in m0.values()) > 1e-3
