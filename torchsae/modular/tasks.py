"""The modular training tasks (``torchsae.train.task.TrainTask``s the generic loop trains).

Three modes, one model class (:class:`ModularModel`: an encoder part, optionally an adapter, a decoder
part, optionally a frozen *teacher* encoder part), one data side (``a``: the identity's faces, SAEHD's
A-side augmentation policy):

- ``identity`` (``torchsae bank train``): one identity's autoencoder, face -> encoder -> decoder ->
  face, with SAEHD's own A-side loss (masked DSSIM + MSE, eyes-mouth priority, mask MSE;
  ``SAEHDLoss.side_loss``). Its latent space is its own: ``space = identity``.
- ``distill`` (``torchsae bank distill --teacher T``): the same, plus ``distill_weight ·
  10·MSE(student_code, teacher_code)`` where the teacher is T's frozen bank encoder run on the
  student's (warped) input faces. A light pull, not a forced shared latent; the student's parts are
  written in T's space, so T's decoder (and every other decoder in that space) accepts its codes.
- ``adapter`` (``torchsae bank adapt --identity X --into S``): X's bank encoder (frozen) -> adapter
  (trainable) -> S's bank decoder (frozen). Objective, on X's faces x: the adapter should turn X's code
  into the code S's frozen encoder gives the same face, ``10·MSE(adapter(E_X(x)), E_S(x))``, and
  S's frozen decoder should render both the same, ``10·MSE(D_S(adapter(E_X(x))), D_S(E_S(x)))`` on
  image and mask. Every decoder of space S consumes E_S's codes, so it consumes the adapted ones:
  X -> Y for every Y in S, with no existing part retrained (they stay bit-identical). The adapter is
  written as X's ``adapter`` in S's space, its meta recording the latent it consumes (X's).

Each mode writes its trained parts to the bank at every checkpoint the loop writes (``on_saved``),
with the latent spec and meta (mode, steps, teacher/anchor, run config). The checkpoint holds the
frozen parts too, so a resume needs nothing from the bank but is checked against the mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchsae.config import Config
from torchsae.errors import ConfigError, TorchSAEError
from torchsae.losses import SAEHDLoss
from torchsae.losses.filters import blur_out_mask
from torchsae.losses.terms import mse_per_sample
from torchsae.modular.bank import ModuleBank, check_identity
from torchsae.modular.latent import LatentSpec, check_compatible
from torchsae.modular.parts import Adapter, build_parts, check_df, frozen_copy, latent_spec
from torchsae.optim import build_optimizer
from torchsae.train import preview as pv
from torchsae.train.checkpoint import CheckpointError, TrainingCheckpoint
from torchsae.train.speed import maybe_compile
from torchsae.train.task import Autocast, Batch

MODES = ("identity", "distill", "adapter")
SIDE = "a"  # the one data side: the identity's faces (data_dir_a, SAEHD's A policy)


@dataclass(frozen=True)
class ModularRun:
    """What a modular run trains, beside its Config: the mode, the bank, the identity and its links."""

    mode: str
    bank: str
    identity: str
    teacher: str | None = None  # distill: the identity whose frozen encoder is the teacher
    distill_weight: float = 1.0
    into: str | None = None  # adapter: the identity whose encoder/decoder define the target space
    adapter_hidden: int | None = None
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"modular mode {self.mode!r}: must be one of {', '.join(MODES)}")
        check_identity(self.identity)
        if self.mode == "distill" and not self.teacher:
            raise ConfigError("distill: needs --teacher IDENTITY")
        if self.mode == "adapter" and not self.into:
            raise ConfigError("adapter: needs --into IDENTITY")
        if self.distill_weight < 0:
            raise ConfigError(f"distill_weight {self.distill_weight}: must be >= 0")

    @property
    def task_name(self) -> str:
        return f"modular-{self.mode}"


class ModularModel(nn.Module):
    """face -> ``encoder`` [-> ``adapter``] -> code -> ``decoder`` -> (image, mask); ``teacher`` (frozen)
    gives the code the run pulls toward. Absent parts are None."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        adapter: nn.Module | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.adapter, self.decoder, self.teacher = encoder, adapter, decoder, teacher

    def forward(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        code = self.encoder(face)
        if self.adapter is not None:
            code = self.adapter(code)
        pred, pred_mask = self.decoder(code)
        out = {"code": code, "pred": pred, "pred_mask": pred_mask}
        if self.teacher is not None:
            with torch.no_grad():
                out["teacher_code"] = self.teacher(face)
        return out


def _trainable_only(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(True)
    return module


class ModularTask:
    """A :class:`~torchsae.train.task.TrainTask` for one :class:`ModularRun`; build it with
    :func:`task_factory` (the trainer passes the effective config, the recompute plan and the device)."""

    def __init__(self, run: ModularRun, config: Config, recompute: str, device: torch.device) -> None:
        check_df(config.model, f"bank {run.mode}")
        if config.train.pretrain:
            raise ConfigError("pretrain: modular runs do not pretrain (train an identity instead)")
        if config.loss.gan_power > 0 or config.loss.true_face_power > 0:
            raise ConfigError(
                "gan_power / true_face_power: modular runs train no discriminator; set them to 0"
            )
        self.run, self.config, self.device = run, config, device
        self.name = run.task_name
        self.bank = ModuleBank(run.bank)
        self.loss_fn = SAEHDLoss(config)
        self.produced, self.model, self.input_spec = self._build_model(config.model)
        self.model.to(device)
        self.discriminators: dict[str, nn.Module] = {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = {"model": build_optimizer(params, config.optim, seed=config.train.seed)}
        self._g_params = params
        self._wrapped: nn.Module = self.model
        self._forward: Callable[..., Any] = self.model
        self.swap_decoders = self._swap_decoders()
        self.start_notes = self._notes()

    def _notes(self) -> list[str]:
        """The start summary's lines: what this run trains, into which space, and the X -> Y columns."""
        run = self.run
        what = {
            "identity": f"{run.identity}'s autoencoder",
            "distill": f"{run.identity}'s autoencoder pulled toward {run.teacher}'s frozen encoder "
            f"(distill weight {run.distill_weight:g})",
            "adapter": f"an adapter from {run.identity}'s frozen encoder into {run.into}'s space "
            f"(frozen {run.into} encoder and decoder)",
        }[run.mode]
        swaps = ", ".join(self.swap_decoders) or "none yet"
        return [
            f"{'modular':<12} {what}; bank {run.bank}",
            f"{'latent':<12} {self.produced.id}; previews also decode into: {swaps}",
        ]

    # ---- parts ----

    def _build_model(self, model_cfg: Any) -> tuple[LatentSpec, ModularModel, LatentSpec | None]:
        run, bank = self.run, self.bank
        if run.mode == "identity":
            encoder, decoder = build_parts(model_cfg)
            return latent_spec(model_cfg, run.identity), ModularModel(encoder, decoder), None
        if run.mode == "distill":
            teacher, spec, _ = bank.load_part("encoder", run.teacher)
            mine = latent_spec(model_cfg, spec.space)
            check_compatible(
                mine, spec, f"{run.identity}'s encoder (this run's model options)", f"teacher {run.teacher}"
            )
            encoder, decoder = build_parts(model_cfg)
            return spec, ModularModel(encoder, decoder, teacher=frozen_copy(teacher)), None
        # adapter: X's encoder (frozen) -> adapter -> S's decoder (frozen); S's encoder is the teacher
        encoder, x_spec, _ = bank.load_part("encoder", run.identity)
        anchor, s_spec, _ = bank.load_part("encoder", run.into)
        decoder, d_spec, _ = bank.load_part("decoder", run.into)
        check_compatible(s_spec, d_spec, f"{run.into}'s encoder", f"{run.into}'s decoder")
        same_shape = LatentSpec(s_spec.space, *x_spec.shape[:2], x_spec.resolution, x_spec.face_type)
        check_compatible(same_shape, s_spec, f"{run.identity}'s encoder (shape)", f"{run.into}'s latent")
        check_compatible(
            latent_spec(model_cfg, x_spec.space),
            x_spec,
            "this run's model options",
            f"{run.identity}'s encoder",
        )
        adapter = _trainable_only(Adapter(x_spec.channels, run.adapter_hidden))
        model = ModularModel(frozen_copy(encoder), frozen_copy(decoder), adapter, frozen_copy(anchor))
        return s_spec, model, x_spec

    def _swap_decoders(self) -> dict[str, nn.Module]:
        """The bank's other decoders that consume this run's latent: the preview's X -> Y columns."""
        out: dict[str, nn.Module] = {}
        try:
            parts = self.bank.list()
        except TorchSAEError:
            return out
        for part in parts:
            if part.kind == "decoder" and part.identity != self.run.identity and part.latent == self.produced:
                out[part.identity] = frozen_copy(self.bank.load_part("decoder", part.identity)[0]).to(
                    self.device
                )
        return out

    # ---- the TrainTask protocol ----

    @property
    def generator_params(self) -> list[torch.Tensor]:
        return self._g_params

    def wrap(self, wrap: Callable[[nn.Module], nn.Module], compile_mode: str) -> None:
        self._wrapped = wrap(self.model)
        self._forward = maybe_compile(self._wrapped, compile_mode)

    def no_sync(self) -> contextlib.AbstractContextManager:
        no_sync = getattr(self._wrapped, "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def open_stream(self, cfg: Config, info: Any) -> Any:
        from pipelines.sides import saehd_sides
        from torchsae.train.data import rank_train_stream

        return rank_train_stream(cfg, info, sides=(saehd_sides(cfg.data)[0],))

    def preview_samples(self, cfg: Config, count: int, device: torch.device) -> dict[str, torch.Tensor]:
        from pipelines.sides import saehd_sides
        from torchsae.train.data import make_preview_samples

        return make_preview_samples(cfg, count, device, sides=(saehd_sides(cfg.data)[0],))

    def prepare(self, batch: Batch) -> Batch:
        if not self.loss_fn.apply_blur_out_mask:
            return batch
        out = dict(batch)
        out["target_a"] = blur_out_mask(batch["target_a"], batch["mask_a"], batch["target_a"].shape[-1])
        return out

    def generator_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self._forward(batch["warped_a"])
        if self.run.mode == "adapter":
            with torch.no_grad():
                goal, goal_mask = self.model.decoder(out["teacher_code"])
            terms = {
                "adapter_code": 10.0 * mse_per_sample(out["code"].float(), out["teacher_code"].float()),
                "adapter_image": 10.0 * mse_per_sample(out["pred"].float(), goal.float()),
                "adapter_mask": 10.0 * mse_per_sample(out["pred_mask"].float(), goal_mask.float()),
            }
            total = sum(terms.values())
            terms = {"loss": total, "loss_a": total, **terms}
        else:
            loss_a, parts = self.loss_fn.side_loss(
                batch["target_a"], batch["mask_a"], batch["em_a"], out["pred"], out["pred_mask"], "a"
            )
            total, terms = loss_a, {"loss_a": loss_a, **parts}
            if self.run.mode == "distill":
                distance = 10.0 * mse_per_sample(out["code"].float(), out["teacher_code"].float())
                terms["distill"] = distance
                total = total + self.run.distill_weight * distance
            terms = {"loss": total, **terms}
        return total.sum(), {name: value.detach().mean() for name, value in terms.items()}

    def discriminator_steps(self, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        return {}

    @property
    def preview_labels(self) -> tuple[str, ...]:
        x = self.run.identity
        return (
            f"{x}",
            f"{x}_mask",
            f"{x}_to_{x}" if self.run.mode != "adapter" else f"{x}_to_{self.run.into}",
            *(f"{x}_to_{y}" for y in self.swap_decoders),
        )

    @torch.no_grad()
    def preview_columns(self, samples: Any) -> list[torch.Tensor]:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            face = samples["target_a"]
            out = model(face)
            swaps = [decoder(out["code"])[0] for decoder in self.swap_decoders.values()]
        finally:
            model.train(was_training)
        columns = [face, pv.mask_overlay(face.float(), samples["mask_a"].float()), out["pred"], *swaps]
        return [c.detach().float().clamp(0, 1).cpu() for c in columns]

    def state_dicts(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
        }

    def load_state(self, checkpoint: TrainingCheckpoint) -> None:
        self.model.load_state_dict(checkpoint.model)
        for name, opt in self.optimizers.items():
            if name in (checkpoint.optimizers or {}):
                opt.load_state_dict(checkpoint.optimizers[name])

    def adapt_checkpoint(
        self, checkpoint: TrainingCheckpoint, path: object
    ) -> tuple[TrainingCheckpoint, str | None]:
        if checkpoint.task != self.name:
            raise CheckpointError(
                f"{path}: a {checkpoint.task!r} checkpoint cannot resume a {self.name!r} run"
            )
        return checkpoint, None

    def leave_pretrain(self, checkpoint: TrainingCheckpoint, path: object) -> str | None:
        return None

    # ---- the bank ----

    def meta(self, step: int, path: object) -> dict[str, Any]:
        run = self.run
        meta = {
            "mode": run.mode,
            "identity": run.identity,
            "steps": int(step),
            "checkpoint": str(path) if path is not None else None,
            "latent": self.produced.id,
            "train_config": self.config.to_dict(),
            **run.extra_meta,
        }
        if run.mode == "distill":
            meta.update(teacher=run.teacher, distill_weight=run.distill_weight)
        if run.mode == "adapter":
            meta.update(into=run.into, input_latent=self.input_spec.to_dict())
        return meta

    def on_saved(self, step: int, path: Path | None) -> None:
        """Write this run's trained parts into the bank (after each checkpoint the loop writes)."""
        run, meta = self.run, self.meta(step, path)
        if run.mode == "adapter":
            self.bank.save_part("adapter", run.identity, self.model.adapter, self.produced, meta)
            return
        model_cfg = self.config.model
        self.bank.save_part("encoder", run.identity, self.model.encoder, self.produced, meta, model_cfg)
        self.bank.save_part("decoder", run.identity, self.model.decoder, self.produced, meta, model_cfg)


def task_factory(run: ModularRun) -> Callable[[Config, str, torch.device], ModularTask]:
    """What ``torchsae.train.trainer.train(..., task_factory=)`` takes for ``run``."""

    def build(config: Config, recompute: str, device: torch.device) -> ModularTask:
        return ModularTask(run, config, recompute, device)

    return build
