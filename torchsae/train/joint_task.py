"""Shared encoder, N decoders as a :class:`~torchsae.train.task.TrainTask`: DF generalised to N identities.

One data side per identity (``pipelines.sides.DataSide``, keys 0..N-1 in order), one decoder per
identity (``torchsae.models.shared_n.SharedEncoderN``); every step draws a batch of every identity, and
the generator loss is the sum over identities of SAEHD's per-side reconstruction loss (DSSIM + MSE,
eyes-and-mouth priority, mask MSE; spec §3), summed over the batch like SAEHD's. With the identities
``a`` and ``b`` (data sides keys 0 and 1) model, sides and loss are DF's without the style, GAN and
true-face terms, which this task does not support (they are defined for one A→B direction only).

Train it with the generic loop: ``train(cfg, task_factory=JointTaskFactory(identities))`` (``cfg.data``'s
``data_dir_a/b`` are not read; each identity names its own folder).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchsae.config import Config, effective_config
from torchsae.errors import ConfigError
from torchsae.losses import SAEHDLoss
from torchsae.models.shared_n import SharedEncoderN, check_identity_names
from torchsae.optim import build_optimizer
from torchsae.train.checkpoint import TrainingCheckpoint
from torchsae.train.memory import apply_recompute
from torchsae.train.preview import mask_overlay
from torchsae.train.speed import enable_tf32, maybe_compile, use_channels_last
from torchsae.train.task import Autocast, Batch, load_task_state, task_state_dicts

TASK_NAME = "df-n"


def joint_sides(cfg: Config, identities: Sequence[tuple[str, str | None]]) -> tuple[Any, ...]:
    """One data side per ``(name, faceset folder)``, keys 0..N-1; flips/warp/yaw from ``cfg.data``
    (the run's effective config); no HSV shift and no colour transfer."""
    from pipelines.sides import DataSide, check_sides

    data = effective_config(cfg).data
    check_identity_names([name for name, _ in identities])
    return check_sides(
        DataSide(
            name,
            key,
            folder,
            f"identity {name}",
            flip=data.random_flip_a,
            warp=data.random_warp,
            uniform_yaw=data.uniform_yaw,
        )
        for key, (name, folder) in enumerate(identities)
    )


def check_joint_config(cfg: Config) -> None:
    """The options this task cannot honour, refused in one line."""
    loss = cfg.loss
    unsupported = [
        name
        for name in ("face_style_power", "bg_style_power", "gan_power", "true_face_power")
        if float(getattr(loss, name)) > 0
    ]
    if unsupported:
        raise ConfigError(f"shared encoder, N decoders: {', '.join(unsupported)} must be 0 (A→B-only terms)")
    if cfg.model.archi_type != "df":
        raise ConfigError(f"archi {cfg.model.archi!r}: shared encoder, N decoders needs a df archi")


class JointTask:
    """The task the loop trains; its ``open_stream`` and ``preview_samples`` read the identities' sides."""

    name = TASK_NAME

    def __init__(
        self,
        config: Config,
        recompute: str,
        device: torch.device,
        identities: Sequence[tuple[str, str | None]],
    ) -> None:
        check_joint_config(config)
        self.config = config
        self.sides = joint_sides(config, identities)
        self.identities = tuple(side.name for side in self.sides)
        model = SharedEncoderN(config.model, self.identities).to(device)
        apply_recompute(model, recompute)
        enable_tf32(device)
        use_channels_last(model, device)
        self.model = model
        self.loss_fn = SAEHDLoss(config)
        self.discriminators: dict[str, nn.Module] = {}
        self.optimizers = {"model": build_optimizer(model.parameters(), config.optim, seed=config.train.seed)}
        self._g_params = list(model.parameters())
        self._wrapped: nn.Module = model
        self._forward: Callable[..., Any] = model

    def open_stream(self, cfg: Config, info: Any) -> Any:
        """This rank's Batch stream over the identities' sides (the loop calls it when no hook does)."""
        from torchsae.train.data import rank_train_stream

        return rank_train_stream(cfg, info, self.sides)

    def preview_samples(self, cfg: Config, count: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The fixed preview faces of every identity."""
        from torchsae.train.data import make_preview_samples

        return make_preview_samples(cfg, count, device, self.sides)

    @property
    def generator_params(self) -> list[torch.Tensor]:
        return self._g_params

    @property
    def preview_labels(self) -> tuple[str, ...]:
        first = self.identities[0]
        return (
            *(label for name in self.identities for label in (f"{name}", f"{name}_recon")),
            *(f"{first}_to_{name}" for name in self.identities[1:]),
            f"{first}_pred_mask",
        )

    def wrap(self, wrap: Callable[[nn.Module], nn.Module], compile_mode: str) -> None:
        self._wrapped = wrap(self.model)
        self._forward = maybe_compile(self._wrapped, compile_mode)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self._wrapped.no_sync()

    def prepare(self, batch: Batch) -> Batch:
        if not self.loss_fn.apply_blur_out_mask:
            return batch
        from torchsae.losses.filters import blur_out_mask

        out = dict(batch)
        for name in self.identities:
            target = batch[f"target_{name}"]
            out[f"target_{name}"] = blur_out_mask(target, batch[f"mask_{name}"], target.shape[-1])
        return out

    def generator_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self._forward({name: batch[f"warped_{name}"] for name in self.identities})
        terms: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name in self.identities:
            side_loss, parts = self.loss_fn.side_loss(
                batch[f"target_{name}"],
                batch[f"mask_{name}"],
                batch[f"em_{name}"],
                out[f"pred_{name}"],
                out[f"pred_{name}_mask"],
                name,
            )
            terms[f"loss_{name}"] = side_loss
            terms.update(parts)
            total = side_loss if total is None else total + side_loss
        assert total is not None
        terms = {"loss": total, **terms}
        return total.sum(), {key: value.detach().mean() for key, value in terms.items()}

    def discriminator_steps(self, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        return {}

    def preview_columns(self, samples: Any) -> list[Any]:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                targets = {name: samples[f"target_{name}"] for name in self.identities}
                out = model(targets)
                first = self.identities[0]
                swaps = [model.swap(targets[first], name)[0] for name in self.identities[1:]]
        finally:
            model.train(was_training)
        columns = []
        for name in self.identities:
            columns += [targets[name].float(), out[f"pred_{name}"].float()]
        columns += [s.float() for s in swaps]
        columns.append(mask_overlay(targets[first].float(), out[f"pred_{first}_mask"].float()))
        return [c.detach().clamp(0, 1).cpu() for c in columns]

    def state_dicts(self) -> dict[str, Any]:
        return task_state_dicts(self)

    def load_state(self, checkpoint: TrainingCheckpoint) -> None:
        if checkpoint.task != self.name:
            raise ValueError(f"checkpoint written by task {checkpoint.task!r}, not {self.name!r}")
        load_task_state(self, checkpoint)

    def adapt_checkpoint(
        self, checkpoint: TrainingCheckpoint, path: object
    ) -> tuple[TrainingCheckpoint, str | None]:
        return checkpoint, None

    def leave_pretrain(self, checkpoint: TrainingCheckpoint, path: object) -> str | None:
        return None


@dataclass(frozen=True)
class JointTaskFactory:
    """What ``train(cfg, task_factory=...)`` calls to build the task: ``identities`` = ((name, folder), ...)."""

    identities: tuple[tuple[str, str | None], ...]

    def __call__(self, config: Config, recompute: str, device: torch.device) -> JointTask:
        return JointTask(config, recompute, device, self.identities)
