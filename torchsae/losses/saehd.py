"""SAEHD's generator and discriminator losses, wired from a model output dict and a batch (spec §3).

Vocabulary: A = DeepFaceLab's dst, B = src. DFL's ``src_loss`` is our ``loss_b`` (on ``pred_bb``
against ``target_b``) and ``dst_loss`` is ``loss_a``; the style terms belong to the B side and use
the swap A→B (DFL's ``pred_src_dst``).

**Gradient scale.** DeepFaceLab builds the G loss as a per-sample vector and differentiates it with
``tf.gradients``, i.e. it differentiates the **sum over the batch**; with several GPUs it averages
the per-GPU gradients. :meth:`SAEHDLoss.forward` therefore returns the per-sample total summed over
the batch for ``backward()``. Under DDP each rank sums over its own shard and DDP's all-reduce
averages over ranks, which is exactly DFL's multi-GPU average of per-GPU sums. With gradient
accumulation over k micro-batches the summed gradients equal DFL's for one batch k times larger.
The logged terms are batch means, as DFL prints them. All loss maths runs in fp32 under autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from torchsae.config import Config
from torchsae.losses.adversarial import (
    code_discriminator_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    gan_masked_regularizers,
    true_face_generator_loss,
)
from torchsae.losses.filters import blur_out_mask, fp32_region, soft_dilate_mask
from torchsae.losses.ssim import dssim, saehd_dssim
from torchsae.losses.terms import mae_per_sample, mse_per_sample, style_loss

Tensors = Mapping[str, torch.Tensor]
CodeDiscriminator = Callable[[torch.Tensor], torch.Tensor]
PatchDiscriminator = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SAEHDLoss(nn.Module):
    """SAEHD's loss for one training step, configured from ``Config.loss`` (and ``train.pretrain``).

    Give it the run's effective config (``torchsae.train.pretrain.effective_config``): pretraining
    turns the style powers and the GAN off there, as DeepFaceLab does; the true-face G term stays
    (DFL only skips the code-D *step* in pretraining, see :attr:`trains_code_discriminator`).
    The working resolution is taken from the tensors, so the DSSIM windows always fit the images.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        loss = config.loss
        pretrain = config.train.pretrain
        self.masked_training = loss.masked_training
        self.eyes_mouth_prio = loss.eyes_mouth_prio
        self.apply_blur_out_mask = loss.blur_out_mask
        self.face_style_power = float(loss.face_style_power)
        self.bg_style_power = float(loss.bg_style_power)
        self.gan_power = float(loss.gan_power)
        self.true_face_power = float(loss.true_face_power)
        self.pretrain = pretrain

    @property
    def needs_swap_ng(self) -> bool:
        """Whether the model must also return ``swap_ab_ng`` (swap decoded from a detached code_a)."""
        return self.face_style_power > 0

    @property
    def uses_code_discriminator(self) -> bool:
        """Whether the G loss needs the code discriminator (true_face_power > 0, DF archis)."""
        return self.true_face_power > 0

    @property
    def trains_code_discriminator(self) -> bool:
        """Whether the trainer runs the code-D step (skipped in pretraining, spec §3/§4)."""
        return self.true_face_power > 0 and not self.pretrain

    @property
    def uses_gan(self) -> bool:
        """Whether the G loss has the GAN term and the trainer runs the GAN-D step."""
        return self.gan_power > 0

    def prepare_targets(self, batch: Tensors) -> dict[str, torch.Tensor]:
        """Return the batch with ``target_a``/``target_b`` rewritten by blur_out_mask when it is on.

        DFL rewrites the targets before anything else, so the trainer calls this once per step and
        uses the result for the G loss and the GAN-D step alike.
        """
        out = dict(batch)
        if self.apply_blur_out_mask:
            res = batch["target_a"].shape[-1]
            out["target_a"] = blur_out_mask(batch["target_a"], batch["mask_a"], res)
            out["target_b"] = blur_out_mask(batch["target_b"], batch["mask_b"], res)
        return out

    def _masked(self, image: torch.Tensor, mask_blur: torch.Tensor) -> torch.Tensor:
        """DFL's ``*_masked_opt``: the image times the soft-dilated GT mask under masked_training."""
        return image.float() * mask_blur if self.masked_training else image.float()

    def _side(
        self,
        target: torch.Tensor,
        mask: torch.Tensor,
        mask_blur: torch.Tensor,
        em: torch.Tensor,
        pred: torch.Tensor,
        pred_mask: torch.Tensor,
        prefix: str,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One side's reconstruction loss per sample and its components (``mask_blur``: soft-dilated GT)."""
        res = target.shape[-1]
        target = target.float()
        pred = pred.float()
        mask = mask.float()
        t_opt = self._masked(target, mask_blur)
        p_opt = self._masked(pred, mask_blur)
        parts = {
            f"{prefix}_dssim": saehd_dssim(t_opt, p_opt, res),
            f"{prefix}_mse": 10.0 * mse_per_sample(t_opt, p_opt),
        }
        if self.eyes_mouth_prio:
            em = em.float()
            parts[f"{prefix}_eyes_mouth"] = 300.0 * mae_per_sample(target * em, pred * em)
        parts[f"{prefix}_mask"] = 10.0 * mse_per_sample(mask, pred_mask)
        return torch.stack(list(parts.values())).sum(dim=0), parts

    def side_loss(
        self,
        target: torch.Tensor,
        mask: torch.Tensor,
        em: torch.Tensor,
        pred: torch.Tensor,
        pred_mask: torch.Tensor,
        prefix: str,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One side's reconstruction loss per sample (DSSIM + MSE, masked as configured, eyes-mouth
        priority, mask MSE) and its components: SAEHD's A/B term for a model with one side
        (``torchsae.modular``)."""
        device = target.device
        with fp32_region(device):
            mask_blur = soft_dilate_mask(mask.float(), target.shape[-1])
            return self._side(target, mask, mask_blur, em, pred, pred_mask, prefix)

    def _style_terms(
        self, out: Tensors, batch: Tensors, mask_b_blur: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The B side's face_style and bg_style terms (spec §3), per sample."""
        res = batch["target_a"].shape[-1]
        parts: dict[str, torch.Tensor] = {}
        if self.face_style_power > 0:
            if "swap_ab_ng" not in out:
                raise KeyError("face_style_power > 0 needs the model output 'swap_ab_ng' (see needs_swap_ng)")
            content = out["swap_ab_ng"].float() * out["swap_ab_mask"].detach().float()
            style = (out["pred_aa"].float() * out["pred_aa_mask"].float()).detach()
            weight = 10000.0 * self.face_style_power / 100.0
            parts["b_face_style"] = style_loss(content, style, sigma=res // 8, weight=weight)
        if self.bg_style_power > 0:
            bsp = self.bg_style_power / 100.0
            # DFL quirk kept on purpose: the anti-mask comes from the *src* (B) target mask.
            anti = 1.0 - mask_b_blur.clamp(0.0, 1.0)
            swap = out["swap_ab"].float() * anti
            target = batch["target_a"].float() * anti
            parts["b_bg_style"] = 10.0 * bsp * dssim(swap, target, filter_size=int(res / 11.6)) + (
                10.0 * bsp * mse_per_sample(swap, target)
            )
        return parts

    def forward(
        self,
        out: Tensors,
        batch: Tensors,
        code_discriminator: CodeDiscriminator | None = None,
        gan_discriminator: PatchDiscriminator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The G loss: ``(sum over the batch of the per-sample total, {name: detached batch mean})``.

        ``batch`` should already have passed :meth:`prepare_targets`. The discriminators are called
        here on the right inputs when their terms are on (they run under the caller's autocast; the
        loss maths is fp32). Term names: ``loss`` (mean total), ``loss_a``, ``loss_b`` and the
        components ``a_dssim, a_mse, a_eyes_mouth, a_mask, b_..., b_face_style, b_bg_style,
        true_face, gan, gan_tv, gan_bg``.
        """
        device = batch["target_a"].device
        with fp32_region(device):
            res = batch["target_a"].shape[-1]
            mask_a_blur = soft_dilate_mask(batch["mask_a"].float(), res)
            mask_b_blur = soft_dilate_mask(batch["mask_b"].float(), res)
        code_logits = None
        gan_logits = None
        if self.uses_code_discriminator:
            if code_discriminator is None:
                raise ValueError("true_face_power > 0 needs the code discriminator passed to SAEHDLoss")
            code_logits = code_discriminator(out["code_b"])
        if self.uses_gan:
            if gan_discriminator is None:
                raise ValueError("gan_power > 0 needs the GAN discriminator passed to SAEHDLoss")
            gan_logits = gan_discriminator(self._masked(out["pred_bb"], mask_b_blur))

        with fp32_region(device):
            loss_a, parts_a = self._side(
                batch["target_a"],
                batch["mask_a"],
                mask_a_blur,
                batch["em_a"],
                out["pred_aa"],
                out["pred_aa_mask"],
                "a",
            )
            loss_b, parts_b = self._side(
                batch["target_b"],
                batch["mask_b"],
                mask_b_blur,
                batch["em_b"],
                out["pred_bb"],
                out["pred_bb_mask"],
                "b",
            )
            style = self._style_terms(out, batch, mask_b_blur)
            for value in style.values():
                loss_b = loss_b + value
            extra: dict[str, torch.Tensor] = {}
            if code_logits is not None:
                extra["true_face"] = true_face_generator_loss(code_logits, self.true_face_power)
            if gan_logits is not None:
                extra["gan"] = gan_generator_loss(gan_logits[0], gan_logits[1], self.gan_power)
                if self.masked_training:
                    extra["gan_tv"], extra["gan_bg"] = gan_masked_regularizers(
                        out["pred_bb"], batch["target_b"], mask_b_blur
                    )
            total = loss_a + loss_b
            for value in extra.values():
                total = total + value
            terms = {
                "loss": total,
                "loss_a": loss_a,
                "loss_b": loss_b,
                **parts_a,
                **parts_b,
                **style,
                **extra,
            }
            return total.sum(), {name: value.detach().mean() for name, value in terms.items()}

    def code_discriminator_loss(
        self, out: Tensors, code_discriminator: CodeDiscriminator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The code-D step's loss (sum over the batch) on detached codes, and its logged mean.

        Both codes go through the discriminator in one batch: exact (it has no batch statistics) and
        one forward per backward, which DDP-wrapped discriminators need.
        """
        logits_a, logits_b = code_discriminator(
            torch.cat([out["code_a"].detach(), out["code_b"].detach()])
        ).chunk(2)
        per_sample = code_discriminator_loss(logits_a, logits_b)
        return per_sample.sum(), {"code_d": per_sample.detach().mean()}

    def gan_discriminator_loss(
        self, out: Tensors, batch: Tensors, gan_discriminator: PatchDiscriminator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The GAN-D step's loss (sum over the batch): real = target_b, fake = detached pred_bb.

        Both are masked with the soft-dilated B mask under masked_training, as in the G term, and go
        through the discriminator as one batch (see :meth:`code_discriminator_loss`).
        """
        device = batch["target_b"].device
        with fp32_region(device):
            mask_b_blur = soft_dilate_mask(batch["mask_b"].float(), batch["mask_b"].shape[-1])
            real = self._masked(batch["target_b"], mask_b_blur)
            fake = self._masked(out["pred_bb"].detach(), mask_b_blur)
        center, full = gan_discriminator(torch.cat([real, fake]))
        (real_c, fake_c), (real_x, fake_x) = center.chunk(2), full.chunk(2)
        per_sample = gan_discriminator_loss(real_c, real_x, fake_c, fake_x)
        return per_sample.sum(), {"gan_d": per_sample.detach().mean()}
