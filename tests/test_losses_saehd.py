"""SAEHDLoss wiring against a numpy re-derivation of spec §3, plus gradient scale and fp32 under autocast.

The references reuse the float64 numpy functions of tests/test_losses.py (DSSIM from the textbook
formulas, DFL's blur written as an explicit 2-D correlation). Resolution 64 keeps it fast:
DSSIM window int(64/11.6) = 5, mask blur σ = max(1, 64//32) = 2, style blur σ = 64//8 = 8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_losses import ref_bce, ref_dssim, ref_soft_dilate, ref_style

from torchsae.config import Config, LossConfig, TrainConfig
from torchsae.losses import SAEHDLoss, blur_out_mask
from torchsae.train.pretrain import effective_config

RES = 64
FS = 5  # int(64 / 11.6)


def make_case(seed: int = 0, n: int = 2) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A random batch and model output (numpy float32) with face-like rectangular masks."""
    rng = np.random.default_rng(seed)

    def img() -> np.ndarray:
        return rng.random((n, 3, RES, RES)).astype(np.float32)

    def msk() -> np.ndarray:
        m = np.zeros((n, 1, RES, RES), np.float32)
        for i in range(n):
            y, x = rng.integers(8, 24, size=2)
            m[i, :, y : y + 30, x : x + 28] = 1.0
        return m

    def soft() -> np.ndarray:
        return rng.random((n, 1, RES, RES)).astype(np.float32)

    batch = {"target_a": img(), "mask_a": msk(), "target_b": img(), "mask_b": msk()}
    # Eyes/mouth masks partly outside the face mask, so masked and unmasked em terms differ.
    batch["em_a"] = msk() * 0.5
    batch["em_b"] = (rng.random((n, 1, RES, RES)) > 0.7).astype(np.float32)
    out = {k: img() for k in ("pred_aa", "pred_bb", "swap_ab", "swap_ab_ng")}
    out.update({k: soft() for k in ("pred_aa_mask", "pred_bb_mask", "swap_ab_mask")})
    out["code_a"] = rng.normal(size=(n, 8, 4, 4)).astype(np.float32)
    out["code_b"] = rng.normal(size=(n, 8, 4, 4)).astype(np.float32) + 0.5
    return batch, out


def torchify(d: dict[str, np.ndarray], grad: bool = False) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, requires_grad=grad) for k, v in d.items()}


def mean3(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).mean(1)


def ref_side(b: dict, o: dict, side: str, masked: bool, emp: bool) -> dict[str, np.ndarray]:
    t, m, em = (b[f"{k}_{side}"].astype(np.float64) for k in ("target", "mask", "em"))
    p = o[f"pred_{side}{side}"].astype(np.float64)
    pm = o[f"pred_{side}{side}_mask"].astype(np.float64)
    mb = ref_soft_dilate(m, RES)
    to, po = (t * mb, p * mb) if masked else (t, p)
    parts = {"dssim": 10 * ref_dssim(to, po, FS), "mse": 10 * mean3((to - po) ** 2)}
    if emp:
        parts["eyes_mouth"] = 300 * mean3(np.abs(t * em - p * em))
    parts["mask"] = 10 * mean3((m - pm) ** 2)
    return parts


def config(pretrain: bool = False, **loss: object) -> Config:
    return Config(loss=LossConfig(**loss), train=TrainConfig(pretrain=pretrain))


@pytest.mark.parametrize(("masked", "emp"), [(True, False), (False, True), (True, True)])
def test_reconstruction_terms_match_reference(masked: bool, emp: bool) -> None:
    b, o = make_case()
    loss, terms = SAEHDLoss(config(masked_training=masked, eyes_mouth_prio=emp))(torchify(o), torchify(b))
    total = 0.0
    for side in "ab":
        parts = ref_side(b, o, side, masked, emp)
        for name, value in parts.items():
            assert terms[f"{side}_{name}"].item() == pytest.approx(value.mean(), rel=1e-5), name
        side_total = sum(parts.values())
        assert terms[f"loss_{side}"].item() == pytest.approx(side_total.mean(), rel=1e-5)
        total = total + side_total
    assert ("a_eyes_mouth" in terms) == emp
    assert loss.item() == pytest.approx(total.sum(), rel=1e-5)  # summed over the batch
    assert terms["loss"].item() == pytest.approx(total.mean(), rel=1e-5)
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())


def test_style_terms_match_reference_and_route_gradients() -> None:
    b, o = make_case(seed=1)
    fsp, bsp = 20.0, 40.0
    fn = SAEHDLoss(config(face_style_power=fsp, bg_style_power=bsp))
    assert fn.needs_swap_ng
    out = torchify(o, grad=True)
    loss, terms = fn(out, torchify(b))
    loss.backward()

    content = o["swap_ab_ng"].astype(np.float64) * o["swap_ab_mask"]
    style = o["pred_aa"].astype(np.float64) * o["pred_aa_mask"]
    face = ref_style(content, style, RES // 8, 10000 * fsp / 100)
    anti = 1 - np.clip(ref_soft_dilate(b["mask_b"].astype(np.float64), RES), 0, 1)  # src mask (DFL quirk)
    swap, tgt = o["swap_ab"] * anti, b["target_a"] * anti
    bg = 10 * (bsp / 100) * ref_dssim(swap, tgt, FS) + 10 * (bsp / 100) * mean3((swap - tgt) ** 2)
    assert terms["b_face_style"].item() == pytest.approx(face.mean(), rel=1e-4)
    assert terms["b_bg_style"].item() == pytest.approx(bg.mean(), rel=1e-5)
    recon_b = sum(ref_side(b, o, "b", True, False).values())
    assert terms["loss_b"].item() == pytest.approx((recon_b + face + bg).mean(), rel=1e-5)

    # Stop-gradients: the face-style term reaches only swap_ab_ng; the swap mask gets nothing.
    assert out["swap_ab_mask"].grad is None
    assert out["swap_ab_ng"].grad is not None and out["swap_ab_ng"].grad.abs().sum() > 0
    plain = torchify(o, grad=True)
    SAEHDLoss(config(bg_style_power=bsp))(plain, torchify(b))[0].backward()
    for key in ("pred_aa", "pred_aa_mask", "swap_ab"):
        torch.testing.assert_close(out[key].grad, plain[key].grad, rtol=1e-6, atol=1e-9)


def test_face_style_without_swap_ng_is_a_clear_error() -> None:
    b, o = make_case()
    del o["swap_ab_ng"]
    with pytest.raises(KeyError, match="swap_ab_ng"):
        SAEHDLoss(config(face_style_power=10.0))(torchify(o), torchify(b))


def code_d(code: torch.Tensor) -> torch.Tensor:
    """A stand-in code discriminator: logits = 2·(first channel)."""
    return code[:, :1] * 2.0


def gan_d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in patch discriminator with a coarse centre map and a full-resolution map."""
    return x.mean(1, keepdim=True)[:, :, ::8, ::8] * 4 - 2, x[:, :1] * 3 - 1


def ref_gan_d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(1, keepdims=True)[:, :, ::8, ::8] * 4 - 2, x[:, :1] * 3 - 1


def test_true_face_and_gan_generator_terms() -> None:
    b, o = make_case(seed=2)
    tfp, gp = 0.01, 0.1
    fn = SAEHDLoss(config(true_face_power=tfp, gan_power=gp))
    loss, terms = fn(torchify(o), torchify(b), code_discriminator=code_d, gan_discriminator=gan_d)

    # code_b is DFL's code_s (src): the G term pushes src codes towards "real".
    true_face = tfp * ref_bce(2.0 * o["code_b"][:, :1].astype(np.float64), 1.0)
    mb = ref_soft_dilate(b["mask_b"].astype(np.float64), RES)
    pred = o["pred_bb"].astype(np.float64)
    fc, fx = ref_gan_d(pred * mb)
    gan = gp * (ref_bce(fc, 1.0) + ref_bce(fx, 1.0))
    tv = 1e-6 * (
        ((pred[:, :, 1:] - pred[:, :, :-1]) ** 2).sum((1, 2, 3))
        + ((pred[..., 1:] - pred[..., :-1]) ** 2).sum((1, 2, 3))
    )
    gan_bg = 0.02 * mean3((pred * (1 - mb) - b["target_b"] * (1 - mb)) ** 2)
    for name, value in (("true_face", true_face), ("gan", gan), ("gan_tv", tv), ("gan_bg", gan_bg)):
        assert terms[name].item() == pytest.approx(value.mean(), rel=1e-5), name
    recon = sum(ref_side(b, o, s, True, False)[k] for s in "ab" for k in ("dssim", "mse", "mask"))
    assert loss.item() == pytest.approx((recon + true_face + gan + tv + gan_bg).sum(), rel=1e-5)


def test_gan_without_masked_training_has_no_regularisers() -> None:
    b, o = make_case(seed=3)
    _, terms = SAEHDLoss(config(gan_power=0.5, masked_training=False))(
        torchify(o), torchify(b), gan_discriminator=gan_d
    )
    fc, fx = ref_gan_d(o["pred_bb"].astype(np.float64))  # unmasked input
    assert terms["gan"].item() == pytest.approx(
        (0.5 * (ref_bce(fc, 1.0) + ref_bce(fx, 1.0))).mean(), rel=1e-5
    )
    assert "gan_tv" not in terms and "gan_bg" not in terms


def test_missing_discriminator_is_an_error() -> None:
    b, o = make_case()
    with pytest.raises(ValueError, match="code discriminator"):
        SAEHDLoss(config(true_face_power=0.1))(torchify(o), torchify(b))
    with pytest.raises(ValueError, match="GAN discriminator"):
        SAEHDLoss(config(gan_power=0.1))(torchify(o), torchify(b))


def test_discriminator_losses_match_reference_and_detach_generator() -> None:
    b, o = make_case(seed=4)
    fn = SAEHDLoss(config(true_face_power=0.1, gan_power=0.1))
    out = torchify(o, grad=True)
    code_loss, code_terms = fn.code_discriminator_loss(out, code_d)
    expected = 0.5 * (ref_bce(2.0 * o["code_a"][:, :1], 1.0) + ref_bce(2.0 * o["code_b"][:, :1], 0.0))
    assert code_loss.item() == pytest.approx(expected.sum(), rel=1e-5)
    assert code_terms["code_d"].item() == pytest.approx(expected.mean(), rel=1e-5)

    gan_loss, _ = fn.gan_discriminator_loss(out, torchify(b), gan_d)
    mb = ref_soft_dilate(b["mask_b"].astype(np.float64), RES)
    rc, rx = ref_gan_d(b["target_b"] * mb)
    fc, fx = ref_gan_d(o["pred_bb"] * mb)
    expected = 0.5 * (ref_bce(rc, 1.0) + ref_bce(fc, 0.0)) + 0.5 * (ref_bce(rx, 1.0) + ref_bce(fx, 0.0))
    assert gan_loss.item() == pytest.approx(expected.sum(), rel=1e-5)
    assert not code_loss.requires_grad and not gan_loss.requires_grad  # stand-ins have no weights

    # One discriminator forward per D loss (a DDP-wrapped discriminator needs one forward per backward).
    calls = []
    fn.code_discriminator_loss(out, lambda x: calls.append(len(x)) or code_d(x))
    fn.gan_discriminator_loss(out, torchify(b), lambda x: calls.append(len(x)) or gan_d(x))
    assert calls == [4, 4]


def test_pretrain_turns_off_style_and_gan_but_not_the_true_face_term() -> None:
    cfg = config(
        pretrain=True, face_style_power=10.0, bg_style_power=10.0, gan_power=1.0, true_face_power=0.1
    )
    cfg.data.pretrain_dir = "/faces/generic"
    fn = SAEHDLoss(effective_config(cfg))  # the config the trainer builds its loss from
    assert not fn.needs_swap_ng and not fn.uses_gan
    assert fn.uses_code_discriminator and not fn.trains_code_discriminator
    b, o = make_case()
    _, terms = fn(torchify(o), torchify(b), code_discriminator=code_d)
    assert not {"b_face_style", "b_bg_style", "gan"} & set(terms)


def test_prepare_targets_applies_blur_out_mask_only_when_on() -> None:
    b, _ = make_case()
    tb = torchify(b)
    assert SAEHDLoss(config()).prepare_targets(tb)["target_a"] is tb["target_a"]
    prepared = SAEHDLoss(config(blur_out_mask=True)).prepare_targets(tb)
    for side in "ab":
        expected = blur_out_mask(tb[f"target_{side}"], tb[f"mask_{side}"], RES)
        torch.testing.assert_close(prepared[f"target_{side}"], expected)
        assert not torch.equal(prepared[f"target_{side}"], tb[f"target_{side}"])
    assert prepared["mask_a"] is tb["mask_a"]


class TinyNet(torch.nn.Module):
    """Enough of a model to backpropagate through: one conv giving image + mask."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.sigmoid(self.conv(x))
        return y[:, :3], y[:, 3:]


def run_tiny(b: dict[str, torch.Tensor], fn: SAEHDLoss) -> tuple[torch.Tensor, torch.Tensor]:
    net = TinyNet()
    pa, pam = net(b["target_a"])
    pb, pbm = net(b["target_b"])
    out = {"pred_aa": pa, "pred_aa_mask": pam, "pred_bb": pb, "pred_bb_mask": pbm}
    loss, _ = fn(out, b)
    loss.backward()
    return loss.detach(), net.conv.weight.grad.clone()


def test_gradient_is_of_the_batch_sum() -> None:
    b = torchify(make_case(seed=5)[0])
    doubled = {k: torch.cat([v, v]) for k, v in b.items()}
    fn = SAEHDLoss(config(eyes_mouth_prio=True))
    loss1, grad1 = run_tiny(b, fn)
    loss2, grad2 = run_tiny(doubled, fn)
    assert loss2.item() == pytest.approx(2 * loss1.item(), rel=1e-6)
    # A batch mean would give grad2 == grad1; the sum doubles it (float summation order aside).
    torch.testing.assert_close(grad2, 2 * grad1, rtol=1e-5, atol=1e-6 * grad1.abs().max().item())


def test_loss_is_fp32_under_bf16_autocast() -> None:
    b, o = make_case(seed=6)
    fn = SAEHDLoss(config(eyes_mouth_prio=True, bg_style_power=30.0))
    out16 = {k: torch.tensor(v).bfloat16() for k, v in o.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = fn(out16, torchify(b))
    ref_loss, ref_terms = fn({k: v.float() for k, v in out16.items()}, torchify(b))
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for name, value in ref_terms.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-9), name
