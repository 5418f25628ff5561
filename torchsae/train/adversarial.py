"""SAEHD's two discriminators in training: building them, their optimisers and their own steps.

Spec §3 order of one iteration: the G step, then the code-discriminator step (``true_face_power``,
DF only, skipped while pretraining), then the GAN-discriminator step (``gan_power``). Each D step
runs on a fresh forward pass of the (just updated) autoencoder, with the generator's outputs
detached so the autoencoder receives nothing. The two D steps read the same forward: the code-D step
does not change the autoencoder, so a second forward would give the same tensors.

The D optimisers are DeepFaceLab's: the same optimiser type, lr (and its lr-dropout cosine schedule,
which the trainer sets on every optimiser), lr dropout and ``clipgrad`` as the G optimiser. Their
losses are summed over the batch as the G loss is (DFL differentiates the per-sample vector).

Checkpoints: the trainer stores ``discriminators`` {name: state_dict} and their optimisers under
``optimizers`` {"code", "gan"}; resuming restores both, which keeps resume bit-exact with the
adversarial options on. A discriminator switched on later starts fresh; one switched off is dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from torchsae.config import Config
from torchsae.losses import SAEHDLoss
from torchsae.models.registry import build_discriminator
from torchsae.optim import build_optimizer, clip_grad_norm
from torchsae.train.checkpoint import TrainingCheckpoint
from torchsae.train.precision import resolve_amp

DISCRIMINATOR_NAMES = ("code", "gan")
# fp16 training: the D losses are multiplied by this before backward and the gradients divided after,
# so the small per-pixel BCE gradients of the patch logits do not underflow in fp16. A fixed scale
# keeps the D steps stateless (nothing extra to checkpoint); an overflow is caught by the
# non-finite guard below and skips that step.
FP16_D_LOSS_SCALE = 2.0**10


def build_discriminators(
    cfg: Config, model: nn.Module, loss_fn: SAEHDLoss, device: torch.device
) -> dict[str, nn.Module]:
    """The discriminators this run needs (none when gan_power and true_face_power are 0).

    ``code`` judges the inter's codes (the family's latent: channels × size²);
    ``gan`` is the U-Net patch discriminator over BGR faces with ``gan_patch_size`` / ``gan_dims``.
    """
    discs: dict[str, nn.Module] = {}
    if loss_fn.uses_code_discriminator:
        discs["code"] = build_discriminator("code", cfg.model).to(device)
    if loss_fn.uses_gan:
        discs["gan"] = build_discriminator("gan", cfg.model).to(device)
    return discs


def build_discriminator_optimizers(
    cfg: Config, discs: dict[str, nn.Module], seed: int
) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per discriminator, configured as the G optimiser (spec §4: lr 5e-5 for all);
    ``cfg`` is the run's effective config (``train.pretrain.effective_config``).

    Their lr-dropout generators are seeded ``seed + 1`` (identical on every rank under DDP, as the
    G optimiser's are).
    """
    return {
        name: build_optimizer(disc.parameters(), cfg.optim, seed=seed + 1) for name, disc in discs.items()
    }


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DDP) else module


def _step(
    loss: torch.Tensor, disc: nn.Module, optimizer: torch.optim.Optimizer, clipgrad: bool, scale: float
) -> None:
    """Backward (of ``loss·scale``), unscale, optional clip, update. Non-finite gradients are zeroed
    instead of poisoning the weights; checked on the device (no host sync), so such an update only
    decays the moments."""
    (loss * scale if scale != 1.0 else loss).backward()
    params = [p for p in disc.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else None
    for p in params:
        p.grad = torch.where(finite, p.grad / scale if scale != 1.0 else p.grad, torch.zeros_like(p.grad))
    if clipgrad:
        clip_grad_norm(params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def discriminator_steps(
    cfg: Config,
    loss_fn: SAEHDLoss,
    model: nn.Module,
    discs: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    batch: dict[str, torch.Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """The code-D and GAN-D steps of one iteration; returns their logged losses (batch means).

    ``model`` and ``discs`` may be DDP-wrapped (the D gradients are then averaged over ranks);
    ``batch`` must already have passed ``loss_fn.prepare_targets`` (blur_out_mask).
    """
    terms: dict[str, torch.Tensor] = {}
    run_code = "code" in discs and loss_fn.trains_code_discriminator
    if not run_code and "gan" not in discs:
        return terms
    _, fp16 = resolve_amp(cfg.train.amp, batch["warped_a"].device)
    scale = FP16_D_LOSS_SCALE if fp16 else 1.0
    with torch.no_grad(), autocast():
        out = _unwrap(model)(batch["warped_a"], batch["warped_b"])
    if run_code:
        with autocast():
            loss, t = loss_fn.code_discriminator_loss(out, discs["code"])
        _step(loss, discs["code"], optimizers["code"], cfg.optim.clipgrad, scale)
        terms.update(t)
    if "gan" in discs:
        with autocast():
            loss, t = loss_fn.gan_discriminator_loss(out, batch, discs["gan"])
        _step(loss, discs["gan"], optimizers["gan"], cfg.optim.clipgrad, scale)
        terms.update(t)
    return terms


def drop_reshaped_gan(state: TrainingCheckpoint, cfg: Config) -> tuple[TrainingCheckpoint, bool]:
    """``state`` without its GAN discriminator and optimiser when ``cfg`` gives the GAN another shape
    than the checkpoint's config did; the flag says whether anything was dropped.

    DeepFaceLab lets gan_patch_size and gan_dims change whenever it asks the GAN options again (a
    common recipe turns the GAN on late, choosing them then); a reshaped discriminator starts afresh.
    """
    stored = (state.config or {}).get("model") or {}
    resolution = stored.get("resolution", cfg.model.resolution)

    def shape(model: dict[str, Any]) -> tuple[int, int]:
        patch = model.get("gan_patch_size")
        return (patch if patch is not None else resolution // 8, model.get("gan_dims", 16))

    wanted = {"gan_patch_size": cfg.model.gan_patch_size, "gan_dims": cfg.model.gan_dims}
    if "gan" not in (state.discriminators or {}) or shape(stored) == shape(wanted):
        return state, False
    kept = dataclasses.replace(
        state,
        discriminators={k: v for k, v in state.discriminators.items() if k != "gan"},
        optimizers={k: v for k, v in (state.optimizers or {}).items() if k != "gan"},
    )
    return kept, True
