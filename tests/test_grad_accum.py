"""Gradient accumulation and micro-batching give the full-batch update (the memory plan relies on it).

DeepFaceLab differentiates the loss summed over the batch, so k micro-batches of n/k samples, each
loss summed, accumulate exactly the full batch's gradient; the optimiser must then step once, with
one lr-dropout mask draw per step. These tests run the real trainer on the CPU on the same samples
split differently and compare the gradients the optimiser receives (each tensor relative to its
scale, tolerance derived in tests/helpers_optim.py), then check that the optimiser applied its rule
exactly once to exactly that gradient (one lr-dropout draw). Comparing the weights after the step
instead would amplify float32 summation-order noise in near-zero gradients ~100x (AdaBelief's first
step is lr·0.1·g/(√v + 1e-6)), which made these tests fail on some CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_optim import StepRecord, assert_same_gradients, record_optimizer_steps, replay_step

from torchsae.config import Config, ModelConfig
from torchsae.models import SAEHD
from torchsae.optim import AdaBelief, build_optimizer
from torchsae.train import checkpoint as ck
from torchsae.train import trainer as trainer_mod
from torchsae.train.hooks import TrainHooks
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


def _run(monkeypatch: pytest.MonkeyPatch, cfg: Config) -> StepRecord:
    """Train one update; the G optimiser's one step (its weights before and after, its gradients)."""
    hooks = TrainHooks(open_stream=lambda c, info: _FixedStream(c.train.batch_size))
    with record_optimizer_steps(AdaBelief) as steps:
        trainer_mod.train(cfg, hooks=hooks)
    assert len(steps) == 1, f"{len(steps)} optimiser steps for one update"
    saved = ck.load_checkpoint(Path(cfg.train.run_dir) / "models" / "last.pth")["model"]
    names = [name for name, _ in SAEHD(cfg.model).named_parameters()]  # the optimiser's order
    for name, after in zip(names, steps[0].after, strict=True):
        assert torch.equal(saved[name], after), name  # the step recorded is the one saved
    return steps[0]


def _assert_same_update(full: StepRecord, other: StepRecord, cfg: Config) -> None:
    """``other`` started from the same weights, received the full batch's gradient, and made exactly one
    optimiser step with it (the rule applied once, with one lr-dropout draw)."""
    for a, b in zip(full.before, other.before, strict=True):
        assert torch.equal(a, b)
    assert_same_gradients(other.grads, full.grads)
    moved = max((a - b).abs().max().item() for a, b in zip(full.after, full.before, strict=True))
    assert moved > 5e-4  # AdaBelief's first update is about 3.5·lr per weight: the step happened
    for record in (full, other):
        replayed = replay_step(record, lambda params: build_optimizer(params, cfg.optim, seed=cfg.train.seed))
        for i, (got, want) in enumerate(zip(record.after, replayed, strict=True)):
            assert torch.equal(got, want), f"parameter {i}: not one optimiser step on the recorded gradient"


@pytest.mark.parametrize("lr_dropout", [False, True])
def test_accumulated_step_equals_full_batch_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lr_dropout: bool
) -> None:
    full_cfg = _config(tmp_path / "full", FULL, 1, lr_dropout)
    full = _run(monkeypatch, full_cfg)
    accumulated = _run(monkeypatch, _config(tmp_path / "accum", 2, 2, lr_dropout))
    _assert_same_update(full, accumulated, full_cfg)


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
    _assert_same_update(full, planned, full_cfg)
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
        with record_optimizer_steps(AdaBelief) as steps:
            loss = g_step(parts, list(split_batch(batch, micro)))
        assert len(steps) == 1, f"{len(steps)} optimiser steps for one g_step"
        results.append((steps[0], loss))
    _assert_same_update(results[0][0], results[1][0], cfg)
    # the summed loss: FULL per-sample totals added in another order, ≤ FULL·eps relative
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=0)
