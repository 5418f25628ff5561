"""A bare SAEHD generator step shared by the memory probe and the throughput benchmark.

Why a second copy of "forward, loss, backward, update" next to the trainer's loop: the probe and the
benchmark must run exactly the work of one optimiser step (same model, same loss, same optimiser,
same AMP and gradient accumulation) but without the trainer's run folder, checkpoints, signal
handling and logging. The pieces (``build_model``, ``SAEHDLoss``, ``build_optimizer``) are the trainer's own;
only the orchestration is repeated, and it is short.

The G step follows the trainer: the loss is the per-sample total summed over each micro-batch, so
accumulating ``k`` micro-batches sums to the full-batch gradient; the optimiser steps once (its
lr-dropout masks are drawn once per step, never per micro-batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pipelines.synthetic import synthetic_batch  # noqa: F401  (re-exported: the step and its batch)
from torchsae.config import Config
from torchsae.losses import SAEHDLoss
from torchsae.models.registry import build_model
from torchsae.optim import build_optimizer
from torchsae.train.adversarial import build_discriminators

Batch = dict[str, torch.Tensor]


@dataclass
class StepParts:
    """Everything one G step touches: model, loss, discriminators used by the G loss, optimiser."""

    model: nn.Module
    loss_fn: SAEHDLoss
    discriminators: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    forward: Callable[..., dict[str, torch.Tensor]]
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast in the AMP dtype (a no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)


def build_parts(
    cfg: Config,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    use_scaler: bool = False,
    fake_mode: contextlib.AbstractContextManager | None = None,
) -> StepParts:
    """Model, loss, G-loss discriminators and the G optimiser as the trainer builds them, on ``device``.

    ``cfg`` is the run's effective config (``train.pretrain.effective_config``), as the trainer's.

    ``fake_mode`` (a ``FakeTensorMode``): build on the meta device, then give the weights fake storage
    on ``device`` inside that mode (no init cost; what the memory estimate uses). The returned parts
    must then be used inside the same mode.
    """
    device = torch.device(device)
    loss_fn = SAEHDLoss(cfg)
    empty = fake_mode is not None
    with torch.device("meta") if empty else contextlib.nullcontext():
        model = build_model(cfg.model)
        discs = build_discriminators(cfg, model, loss_fn, torch.device("meta") if empty else device)
    with fake_mode or contextlib.nullcontext():
        for module in (model, *discs.values()):
            module.to_empty(device=device) if empty else module.to(device)
    trainable = {id(p) for p in model.trainable_parameters(cfg.data.random_warp)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    optimizer = build_optimizer(
        [p for p in model.parameters() if p.requires_grad],
        cfg.optim,
        seed=cfg.train.seed,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler) if use_scaler else None
    return StepParts(model, loss_fn, discs, optimizer, model, amp_dtype, scaler)


def split_batch(batch: Batch, micro_batch: int) -> Iterator[Batch]:
    """Consecutive micro-batches of ``micro_batch`` samples per side (views, no copies)."""
    size = batch["warped_a"].shape[0]
    for start in range(0, size, micro_batch):
        yield {key: value[start : start + micro_batch] for key, value in batch.items()}


def g_step(parts: StepParts, micro_batches: list[Batch] | Iterator[Batch]) -> torch.Tensor:
    """One optimiser step over the given micro-batches; returns the summed loss (no host sync).

    Gradients are accumulated over the micro-batches (each loss a sum over its samples), then the
    optimiser steps once and the gradients are released (``set_to_none``), as in the trainer.
    """
    total: torch.Tensor | None = None
    device: torch.device | None = None
    for batch in micro_batches:
        batch = parts.loss_fn.prepare_targets(batch)
        device = batch["warped_a"].device
        with parts.autocast(device):  # the loss too: the discriminators inside it run under AMP
            out = parts.forward(batch["warped_a"], batch["warped_b"], parts.loss_fn.needs_swap_ng)
            discs = parts.discriminators
            loss, _ = parts.loss_fn(out, batch, discs.get("code"), discs.get("gan"))
        (parts.scaler.scale(loss) if parts.scaler is not None else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if total is None:
        raise ValueError("g_step needs at least one micro-batch")
    if parts.scaler is not None:
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    for disc in parts.discriminators.values():
        disc.zero_grad(set_to_none=True)
    return total
