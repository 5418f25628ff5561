"""What the generic training loop (``torchsae.train.trainer``) needs from a model to train it.

The loop owns everything that is the same for every model: AMP and the scaler, gradient accumulation,
the non-finite/spike guard with its deferred saves and restores, DDP, logging, checkpoints, previews,
exact resume. A :class:`TrainTask` owns the parts (networks, losses, optimisers) and says how one
batch trains them. SAEHD (``torchsae.train.saehd_task.SAEHDTask``) is the first task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from torchsae.train.checkpoint import TrainingCheckpoint

Batch = dict[str, torch.Tensor]
Autocast = Callable[[], contextlib.AbstractContextManager]


class TrainTask(Protocol):
    """Built from the run's effective config with the global RNGs seeded identically on every rank;
    its optimisers' ``"model"`` entry is the generator's (the one the guard and the scaler watch)."""

    name: str  # the checkpoint's ``task`` entry
    model: nn.Module  # the trained network (the checkpoint's ``model``, the previews, the summary)
    discriminators: dict[str, nn.Module]  # trained by ``discriminator_steps`` (may be empty)
    optimizers: dict[str, torch.optim.Optimizer]

    @property
    def generator_params(self) -> list[torch.Tensor]:
        """The parameters the generator step updates (gradient norm, clipping)."""
        ...

    def wrap(self, wrap: Callable[[nn.Module], nn.Module], compile_mode: str) -> None:
        """Wrap the networks (DDP, or unchanged in one process) and compile the forward pass."""

    def no_sync(self) -> contextlib.AbstractContextManager:
        """DDP's no_sync of the generator (micro-batches before the last one of a step)."""
        ...

    def prepare(self, batch: Batch) -> Batch:
        """A batch from the data stream as the losses read it."""
        ...

    def generator_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to backward, detached logged terms) of one micro-batch; runs under the loop's autocast."""
        ...

    def discriminator_steps(self, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        """The discriminators' updates after a good generator step; their logged terms."""
        ...

    def preview_columns(self, samples: Any) -> list[Any]:
        """The preview grid's columns for the fixed preview samples."""
        ...

    def state_dicts(self) -> dict[str, Any]:
        """``model``, ``optimizers`` and ``discriminators`` entries of a checkpoint."""
        ...

    def load_state(self, checkpoint: TrainingCheckpoint) -> None:
        """Load those entries (raises RuntimeError/ValueError/KeyError when they do not fit)."""

    def adapt_checkpoint(
        self, checkpoint: TrainingCheckpoint, path: object
    ) -> tuple[TrainingCheckpoint, str | None]:
        """A checkpoint about to be resumed, with what no longer fits dropped; a line saying what."""
        ...

    def leave_pretrain(self, checkpoint: TrainingCheckpoint, path: object) -> str | None:
        """After loading: whether resuming ends pretraining (then done, and the line to print)."""
        ...
