"""SAEHD as a :class:`~torchsae.train.task.TrainTask`: the autoencoder of any registered family, its
summed generator loss (spec §3), the code and GAN discriminators, the preview columns."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from torchsae.config import Config
from torchsae.losses import SAEHDLoss
from torchsae.models.registry import build_model
from torchsae.optim import build_optimizer
from torchsae.train import preview as pv
from torchsae.train.adversarial import (
    build_discriminator_optimizers,
    build_discriminators,
    discriminator_steps,
    drop_reshaped_gan,
)
from torchsae.train.checkpoint import TrainingCheckpoint
from torchsae.train.memory import apply_recompute
from torchsae.train.pretrain import leave_pretrain, leaving_pretrain
from torchsae.train.speed import enable_tf32, maybe_compile, use_channels_last
from torchsae.train.task import Autocast, Batch, load_task_state, task_state_dicts


class SAEHDTask:
    """Built from the run's effective config; ``recompute`` is the memory plan's activation recompute."""

    name = "saehd"

    def __init__(self, config: Config, recompute: str, device: torch.device) -> None:
        self.config = config
        model = build_model(config.model).to(device)
        trainable = {id(p) for p in model.trainable_parameters(config.data.random_warp)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)  # LIAE without random warp freezes inter_ab (spec §2.4)
        apply_recompute(model, recompute)
        enable_tf32(device)
        use_channels_last(model, device)
        self.model = model
        self.loss_fn = SAEHDLoss(config)
        self.discriminators = build_discriminators(config, model, self.loss_fn, device)
        seed = config.train.seed  # the same lr-dropout seed on every rank keeps the replicas identical
        self.optimizers = {"model": build_optimizer(model.parameters(), config.optim, seed=seed)}
        self.optimizers.update(build_discriminator_optimizers(config, self.discriminators, seed))
        self._g_params = [p for p in model.parameters() if p.requires_grad]
        self._wrapped: nn.Module = model
        self._wrapped_discs: dict[str, nn.Module] = dict(self.discriminators)
        self._forward: Callable[..., Any] = model

    @property
    def generator_params(self) -> list[torch.Tensor]:
        return self._g_params

    def wrap(self, wrap: Callable[[nn.Module], nn.Module], compile_mode: str) -> None:
        self._wrapped = wrap(self.model)
        self._wrapped_discs = {name: wrap(d) for name, d in self.discriminators.items()}
        self._forward = maybe_compile(self._wrapped, compile_mode)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self._wrapped.no_sync()

    def prepare(self, batch: Batch) -> Batch:
        return self.loss_fn.prepare_targets(batch)

    def generator_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self._forward(batch["warped_a"], batch["warped_b"], self.loss_fn.needs_swap_ng)
        discs = self._wrapped_discs
        return self.loss_fn(out, batch, _unwrap(discs.get("code")), _unwrap(discs.get("gan")))

    def discriminator_steps(self, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        if not self.discriminators:
            return {}
        wrapped, discs = self._wrapped, self._wrapped_discs
        return discriminator_steps(
            self.config, self.loss_fn, wrapped, discs, self.optimizers, batch, autocast
        )

    def preview_columns(self, samples: Any) -> list[Any]:
        return pv.preview_columns(self.model, samples)

    def state_dicts(self) -> dict[str, Any]:
        return task_state_dicts(self)

    def load_state(self, checkpoint: TrainingCheckpoint) -> None:
        load_task_state(self, checkpoint)

    def adapt_checkpoint(
        self, checkpoint: TrainingCheckpoint, path: object
    ) -> tuple[TrainingCheckpoint, str | None]:
        checkpoint, reshaped = drop_reshaped_gan(checkpoint, self.config)
        note = f"{path}: the GAN discriminator's patch size or dims changed; it starts afresh"
        return checkpoint, note if reshaped else None

    def leave_pretrain(self, checkpoint: TrainingCheckpoint, path: object) -> str | None:
        if not leaving_pretrain(checkpoint, self.config):
            return None
        return leave_pretrain(self.model, self.config, path)  # new inters


def _unwrap(module: nn.Module | None) -> nn.Module | None:
    """The plain module behind DDP: the G loss uses the discriminators without DDP's reducer."""
    return module.module if isinstance(module, DDP) else module
