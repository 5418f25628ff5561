"""The discriminator steps of one iteration (spec §3 order), against hand-written updates."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers_optim import StepRecord, assert_same_gradients, record_optimizer_steps

from torchsae.config import Config, ModelConfig
from torchsae.errors import ConfigError
from torchsae.losses import SAEHDLoss, soft_dilate_mask
from torchsae.models import SAEHD, CodeDiscriminator, UNetPatchDiscriminator
from torchsae.models.discriminators import find_patch_layers
from torchsae.optim import RMSprop
from torchsae.train.adversarial import (
    build_discriminator_optimizers,
    build_discriminators,
    discriminator_steps,
)

RES = 32
LR = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def make_config(archi: str = "df-ud", **loss: float) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(archi=archi, resolution=RES, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4)
    cfg.optim.optimizer = "rmsprop"  # the simplest update to write out by hand
    cfg.optim.lr = LR
    for key, value in loss.items():
        setattr(cfg.loss, key, value)
    return cfg


def make_batch(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for side in "ab":
        for key, ch in (("warped", 3), ("target", 3), ("em", 1)):
            batch[f"{key}_{side}"] = torch.rand(n, ch, RES, RES, generator=g)
        mask = torch.zeros(n, 1, RES, RES)
        mask[:, :, 6:26, 8:24] = 1.0
        batch[f"mask_{side}"] = mask
    return batch


def setup(cfg: Config):
    torch.manual_seed(0)
    model = SAEHD(cfg.model)
    loss_fn = SAEHDLoss(cfg)
    discs = build_discriminators(cfg, model, loss_fn, torch.device("cpu"))
    return model, loss_fn, discs, build_discriminator_optimizers(cfg, discs, seed=0)


def bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Sigmoid cross-entropy written out: softplus(-x) for label 1, softplus(x) for label 0."""
    per_pixel = F.softplus(-logits) if label == 1.0 else F.softplus(logits)
    return per_pixel.flatten(1).mean(1)


def hand_gradients(disc: torch.nn.Module, loss: torch.Tensor, clip: bool = False) -> dict[str, torch.Tensor]:
    """The gradients DFL's RMSprop step receives: d loss / d weights, then clipnorm 1 (optional)."""
    params = dict(disc.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()))
    if clip:
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        grads = [g * (1.0 / max(float(norm), 1.0)) for g in grads]
    return dict(zip(params, grads, strict=True))


def rmsprop_first_step(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """DFL's RMSprop first step by hand: a = 0.1·g², w ← w − lr·g/(√a + 1e-6)."""
    return weight - LR * grad / (torch.sqrt(0.1 * grad * grad) + 1e-6)


def assert_rmsprop_step(record: StepRecord, disc: torch.nn.Module, expected_grads: dict) -> None:
    """The recorded step received the hand-derived gradients and applied DFL's rule to them once.

    The two halves are checked apart because the rule amplifies float32 noise: for |g| ≪ 1e-6 the
    update is lr·g/1e-6 = 1000·g, so comparing the weights would compare summation-order noise in
    near-zero gradients (which differs between CPUs) times 1000. The gradients are compared relative
    to each tensor's scale (helpers_optim.GRAD_RTOL); the rule, applied to the *same* gradients by hand
    and by the optimiser, differs only by the rounding of its few float32 operations: ≤ 4 roundings of
    an update ≤ lr/√0.1 ≈ 3.2e-3 (≈ 1.5e-9) plus one of the weight (≤ 1 ulp of |w|, rtol 1e-6).
    """
    names = [name for name, _ in disc.named_parameters()]
    assert_same_gradients(record.grads, [expected_grads[n] for n in names], names)
    for name, before, grad, p in zip(names, record.before, record.grads, disc.parameters(), strict=True):
        expected = rmsprop_first_step(before, grad)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-8, msg=name)


def test_discriminators_exist_only_with_their_powers() -> None:
    assert setup(make_config())[2] == {}
    _, _, discs, opts = setup(make_config(gan_power=0.1))
    assert set(discs) == {"gan"} and set(opts) == {"gan"}
    assert discs["gan"].layers == find_patch_layers(RES // 8)  # default patch size res/8
    cfg = make_config(gan_power=0.1)
    cfg.model.gan_patch_size, cfg.model.gan_dims = 16, 4
    gan = setup(cfg)[2]["gan"]
    assert gan.layers == find_patch_layers(16) and gan.in_conv.out_channels == 4
    _, _, discs, _ = setup(make_config(true_face_power=0.01))
    assert set(discs) == {"code"} and isinstance(discs["code"], CodeDiscriminator)


def test_true_face_with_liae_is_a_clear_error() -> None:
    cfg = make_config("liae-ud", true_face_power=0.01)
    with pytest.raises(ConfigError, match="true_face_power.*'df'"):
        cfg.validate()
    with pytest.raises(ValueError, match="df"):
        setup(cfg)


@pytest.mark.parametrize("clipgrad", [False, True])
def test_one_iteration_of_discriminator_steps_by_hand(clipgrad: bool) -> None:
    cfg = make_config(gan_power=0.1, true_face_power=0.01)
    cfg.optim.clipgrad = clipgrad
    model, loss_fn, discs, opts = setup(cfg)
    batch = make_batch()
    code_d, gan_d = copy.deepcopy(discs["code"]), copy.deepcopy(discs["gan"])
    model_before = copy.deepcopy(model.state_dict())

    with torch.no_grad():
        out = model(batch["warped_a"], batch["warped_b"])
    # code D: dst (A) codes are real, src (B) codes fake; summed over the batch
    code_loss = (0.5 * (bce(code_d(out["code_a"]), 1.0) + bce(code_d(out["code_b"]), 0.0))).sum()
    expected_code = hand_gradients(code_d, code_loss, clipgrad)
    # GAN D: real = target_b, fake = pred_bb, both times the soft-dilated B mask (masked training)
    mb = soft_dilate_mask(batch["mask_b"], RES)
    rc, rx = gan_d(batch["target_b"] * mb)
    fc, fx = gan_d(out["pred_bb"] * mb)
    gan_loss = (0.5 * (bce(rc, 1.0) + bce(fc, 0.0)) + 0.5 * (bce(rx, 1.0) + bce(fx, 0.0))).sum()
    expected_gan = hand_gradients(gan_d, gan_loss, clipgrad)

    with record_optimizer_steps(RMSprop) as steps:
        terms = discriminator_steps(cfg, loss_fn, model, discs, opts, batch)
    assert [r.optimizer for r in steps] == [opts["code"], opts["gan"]]  # one step each, code D first
    assert terms["code_d"].item() == pytest.approx(code_loss.item() / 2, rel=1e-5)
    assert terms["gan_d"].item() == pytest.approx(gan_loss.item() / 2, rel=1e-5)
    pairs = ((discs["code"], expected_code), (discs["gan"], expected_gan))
    for record, (disc, expected) in zip(steps, pairs, strict=True):
        assert_rmsprop_step(record, disc, expected)
        assert all(p.grad is None for p in disc.parameters())  # the D step leaves no gradients behind
    for key, value in model.state_dict().items():  # the autoencoder is not touched by D steps
        assert torch.equal(value, model_before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_code_step_is_skipped_while_pretraining() -> None:
    cfg = make_config(true_face_power=0.01)
    cfg.train.pretrain = True
    model, loss_fn, discs, opts = setup(cfg)
    before = copy.deepcopy(discs["code"].state_dict())
    assert discriminator_steps(cfg, loss_fn, model, discs, opts, make_batch()) == {}
    for key, value in discs["code"].state_dict().items():
        assert torch.equal(value, before[key])


def test_gan_d_without_masked_training_sees_whole_images() -> None:
    cfg = make_config(gan_power=0.1)
    cfg.loss.masked_training = False
    model, loss_fn, discs, opts = setup(cfg)
    batch = make_batch(seed=3)
    gan_d = copy.deepcopy(discs["gan"])
    with torch.no_grad():
        out = model(batch["warped_a"], batch["warped_b"])
    rc, rx = gan_d(batch["target_b"])
    fc, fx = gan_d(out["pred_bb"])
    expected = (0.5 * (bce(rc, 1.0) + bce(fc, 0.0)) + 0.5 * (bce(rx, 1.0) + bce(fx, 0.0))).mean()
    terms = discriminator_steps(cfg, loss_fn, model, discs, opts, batch)
    assert terms["gan_d"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_non_finite_discriminator_loss_keeps_weights_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config(gan_power=0.1)
    model, loss_fn, discs, opts = setup(cfg)
    original = SAEHDLoss.gan_discriminator_loss

    def poisoned(self, out, batch, disc):
        loss, terms = original(self, out, batch, disc)
        return loss * float("nan"), terms

    monkeypatch.setattr(SAEHDLoss, "gan_discriminator_loss", poisoned)
    before = copy.deepcopy(discs["gan"].state_dict())
    discriminator_steps(cfg, loss_fn, model, discs, opts, make_batch())
    for key, value in discs["gan"].state_dict().items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, before[key])  # zero gradient, fresh RMSprop: no movement at all


def test_unet_discriminator_is_what_the_trainer_builds() -> None:
    cfg = make_config(gan_power=0.5)
    _, _, discs, _ = setup(cfg)
    assert isinstance(discs["gan"], UNetPatchDiscriminator)


def test_fp16_loss_scale_is_undone_exactly() -> None:
    """With --amp fp16 the D losses are scaled by 2^10 before backward and the gradients unscaled
    after; in fp32 arithmetic (no autocast) that must give the unscaled run's weights."""
    results = []
    for amp in ("none", "fp16"):
        cfg = make_config(gan_power=0.1, true_face_power=0.01)
        cfg.train.amp = amp
        model, loss_fn, discs, opts = setup(cfg)
        discriminator_steps(cfg, loss_fn, model, discs, opts, make_batch(seed=5))
        results.append({k: d.state_dict() for k, d in discs.items()})
    for name, state in results[0].items():
        for key, value in state.items():
            torch.testing.assert_close(results[1][name][key], value, rtol=0, atol=1e-7)


def test_bare_step_runs_discriminator_terms_under_bf16_autocast() -> None:
    """The benchmark/probe step (train.step.g_step) evaluates the loss, discriminators included, in autocast.

    Outside autocast the bf16 codes meet fp32 discriminator weights and the step crashes.
    """
    from torchsae.train.step import build_parts, g_step, synthetic_batch

    cfg = make_config("df-ud", true_face_power=0.1, gan_power=0.1)
    parts = build_parts(cfg, "cpu", amp_dtype=torch.bfloat16)
    assert set(parts.discriminators) == {"code", "gan"}
    before = [p.detach().clone() for p in parts.model.parameters()]
    loss = g_step(parts, [synthetic_batch(2, RES, "cpu")])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, parts.model.parameters(), strict=True))
