"""Gradient accumulation and micro-batching give the full-batch update (the memory plan relies on it).

DeepFaceLab differentiates the loss summed over the batch, so k micro-batches of n/k samples, each
loss summed, accumulate exactly the full batch's gradient; the optimiser must then step once, with
one lr-dropout mask draw per step. These tests run the real trainer on the CPU on the same samples
split differently and compare the weights after one optimiser step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from torchsae.config import Config, ModelConfig
from torchsae.train import checkpoint as ck
from torchsae.train import trainer as trainer_mod
from torchsae.train.memory import MemoryPlan
from torchsae.train.step import build_parts, g_step, split_batch, synthetic_batch

TINY = {"archi": "df-ud", "resolution": 32, "ae_dims": 16, "e_dims": 8, "d_dims": 8, "d_mask_dims": 4}
FULL = 4  # samples per side in the fixed batch every run sees


pytestmark = pytest.mark.usefixtures("one_thread")


class _FixedStream:
    """The same FULL samples every step, handed out in chunks of the configured batch size."""

    def __init__(self, batch_size: int) -> None:
        self.batch = synthetic_batch(FULL, TINY["resolution"], "cpu", seed=7)
        self.size = batch_size
        self.position = 0

    def __next__(self) -> dict[str, torch.Tensor]:
        start = self.position % FULL
        self.position += self.size
        return {k: v[start : start + self.size].clone() for k, v in self.batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]

    def close(self) -> None:
        pass


def _config(run_dir: Path, batch_size: int, grad_accum: int, lr_dropout: bool) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(**TINY)
    cfg.data.backend = "synthetic"
    cfg.optim.lr = 1e-3
    cfg.optim.lr_dropout = lr_dropout
    t = cfg.train
    t.batch_size, t.grad_accum, t.max_steps, t.run_dir, t.device = (
        batch_size,
        grad_accum,
        1,
        str(run_dir),
        "cpu",
    )
    t.log_interval, t.preview_interval, t.save_interval = 1, 1000, 1000
    return cfg.validate()


def _run(monkeypatch: pytest.MonkeyPatch, cfg: Config) -> dict[str, torch.Tensor]:
    monkeypatch.setattr(trainer_mod, "rank_train_stream", lambda c, info: _FixedStream(c.train.batch_size))
    trainer_mod.train(cfg)
    return ck.load_checkpoint(Path(cfg.train.run_dir) / "models" / "last.pth")["model"]


def _initial_weights(cfg: Config) -> dict[str, torch.Tensor]:
    from torchsae.models import SAEHD

    torch.manual_seed(cfg.train.seed)
    return SAEHD(cfg.model).state_dict()


def _assert_same_update(full: dict, other: dict, start: dict) -> None:
    moved = max((full[k] - start[k]).abs().max().item() for k in full)
    assert moved > 5e-4  # AdaBelief's first update is about 3.5·lr per weight: the step happened
    for key in full:
        # float summation order differs; 1e-6 is < 0.1 % of an update
        torch.testing.assert_close(other[key], full[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("lr_dropout", [False, True])
def test_accumulated_step_equals_full_batch_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lr_dropout: bool
) -> None:
    full_cfg = _config(tmp_path / "full", FULL, 1, lr_dropout)
    full = _run(monkeypatch, full_cfg)
    accumulated = _run(monkeypatch, _config(tmp_path / "accum", 2, 2, lr_dropout))
    _assert_same_update(full, accumulated, _initial_weights(full_cfg))


def test_memory_plan_micro_batches_with_checkpointing_equal_full_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trainer applies a plan (4 = 2 × 2, every block checkpointed) and prints it."""
    full_cfg = _config(tmp_path / "full", FULL, 1, True)
    full = _run(monkeypatch, full_cfg)
    plan = MemoryPlan(FULL, 2, 2, "all", "none", 123 * 2**20, 2**30, "test plan")
    monkeypatch.setattr(trainer_mod, "plan_for_run", lambda cfg, info: plan)
    planned_cfg = _config(tmp_path / "planned", FULL, 1, True)
    planned_cfg.train.memory_budget = "1GiB"
    planned = _run(monkeypatch, planned_cfg)
    _assert_same_update(full, planned, _initial_weights(full_cfg))
    out = capsys.readouterr().out
    assert "Memory plan: batch 4 per side in 2 micro-batches of 2" in out
    assert "predicted peak 123.00 MiB" in out


def test_trainer_plans_from_the_budget_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path / "run", FULL, 1, False)
    cfg.train.memory_budget = "64GiB"
    _run(monkeypatch, cfg)
    assert "Memory plan: batch 4 per side in one pass; activation recompute none; amp none" in (
        capsys.readouterr().out
    )


def test_g_step_over_micro_batches_equals_one_pass() -> None:
    """The bench/probe step: split_batch + g_step accumulate to the one-pass update as well."""
    cfg = Config()
    cfg.model = ModelConfig(**TINY)
    cfg.optim.lr = 1e-3
    batch = synthetic_batch(FULL, TINY["resolution"], "cpu", seed=3)
    results = []
    for micro in (FULL, 1):
        torch.manual_seed(0)
        parts = build_parts(cfg, "cpu")
        start = {k: v.clone() for k, v in parts.model.state_dict().items()}
        loss = g_step(parts, list(split_batch(batch, micro)))
        results.append((parts.model.state_dict(), loss))
    _assert_same_update(results[0][0], results[1][0], start)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=0)
