"""DeepFaceLab's AdaBelief / RMSprop, lr dropout, the cosine lr and clipnorm against hand-written updates.

The numpy references are spec §4 written out in float64: AdaBelief without bias correction and with
eps outside the square root (using the *new* m in v), RMSprop with ρ 0.9 and no momentum.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from torchsae.config import OptimConfig
from torchsae.optim import AdaBelief, RMSprop, build_optimizer, clip_grad_norm, effective_lr_dropout, lr_at


def ref_adabelief(
    w: np.ndarray, grads: list[np.ndarray], lr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for g in grads:
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * (g - m) ** 2
        w = w - lr * m / (np.sqrt(v) + 1e-6)
    return w, m, v


def ref_rmsprop(w: np.ndarray, grads: list[np.ndarray], lr: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros_like(w)
    for g in grads:
        a = 0.9 * a + 0.1 * g**2
        w = w - lr * g / (np.sqrt(a) + 1e-6)
    return w, a


def make_grads(shape: tuple[int, ...], steps: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 0) for _ in range(steps)]


def run(opt_cls: type, shapes: list[tuple[int, ...]], lrs: list[float], steps: int):
    """Two param groups with their own lr, in float64 so the comparison is not limited by fp32
    rounding of w (an lr-sized step is a few ulps of a unit weight); returns params, optimiser, grads."""
    rng = np.random.default_rng(42)
    inits = [rng.normal(size=s) for s in shapes]
    params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in inits]
    opt = opt_cls([{"params": [p], "lr": lr} for p, lr in zip(params, lrs, strict=True)])
    grads = [make_grads(s, steps, seed=i) for i, s in enumerate(shapes)]
    for k in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        opt.step()
    return params, opt, inits, grads


def test_adabelief_matches_hand_updates() -> None:
    shapes, lrs = [(4, 5), (7,)], [1e-2, 5e-5]
    params, opt, inits, grads = run(AdaBelief, shapes, lrs, steps=4)
    for p, w0, g, lr in zip(params, inits, grads, lrs, strict=True):
        w, m, v = ref_adabelief(w0, g, lr)
        np.testing.assert_allclose(p.detach().numpy() - w0, w - w0, rtol=1e-9)
        np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), m, rtol=1e-10)
        np.testing.assert_allclose(opt.state[p]["exp_avg_var"].numpy(), v, rtol=1e-10)


def test_adabelief_first_step_by_hand() -> None:
    # g = 2: m = 0.2, v = 0.001·(2 - 0.2)² = 0.00324, step = lr·0.2/(0.0569209 + 1e-6).
    p = torch.nn.Parameter(torch.zeros(1))
    opt = AdaBelief([p], lr=0.1)
    p.grad = torch.full((1,), 2.0)
    opt.step()
    assert p.item() == pytest.approx(-0.1 * 0.2 / (math.sqrt(0.00324) + 1e-6), rel=1e-6)


def test_rmsprop_matches_hand_updates() -> None:
    shapes, lrs = [(3, 3, 2), (5,)], [1e-3, 5e-5]
    params, opt, inits, grads = run(RMSprop, shapes, lrs, steps=4)
    for p, w0, g, lr in zip(params, inits, grads, lrs, strict=True):
        w, a = ref_rmsprop(w0, g, lr)
        np.testing.assert_allclose(p.detach().numpy() - w0, w - w0, rtol=1e-9)
        np.testing.assert_allclose(opt.state[p]["square_avg"].numpy(), a, rtol=1e-10)


def test_parameters_without_grad_are_left_alone() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = AdaBelief([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3))


@pytest.mark.parametrize("opt_cls", [AdaBelief, RMSprop])
def test_lr_dropout_masks_updates_but_not_moments(opt_cls: type) -> None:
    torch.manual_seed(0)
    w0 = torch.randn(200, 100)
    g = torch.randn(200, 100)
    p_drop, p_full = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    drop = opt_cls([p_drop], lr=1e-2, lr_dropout=0.3, seed=3)
    full = opt_cls([p_full], lr=1e-2)
    for p, opt in ((p_drop, drop), (p_full, full)):
        p.grad = g.clone()
        opt.step()
    changed = p_drop.detach() != w0
    assert 0.28 < changed.float().mean().item() < 0.32  # keep probability 0.3
    assert torch.equal(p_drop.detach()[changed], p_full.detach()[changed])
    assert torch.equal(p_drop.detach()[~changed], w0[~changed])
    for name, value in full.state[p_full].items():
        assert torch.equal(drop.state[p_drop][name], value), name  # moments updated everywhere


def masks_of(seed: int, steps: int = 3) -> list[torch.Tensor]:
    p = torch.nn.Parameter(torch.zeros(64))
    opt = AdaBelief([p], lr=1.0, lr_dropout=0.3, seed=seed)
    out = []
    for _ in range(steps):
        before = p.detach().clone()
        p.grad = torch.ones(64)
        opt.step()
        out.append(p.detach() != before)
    return out


def test_lr_dropout_is_seeded_and_fresh_each_step() -> None:
    a, b, c = masks_of(5), masks_of(5), masks_of(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not torch.equal(a[0], a[1])  # a fresh mask every step


@pytest.mark.parametrize("opt_cls", [AdaBelief, RMSprop])
def test_state_dict_round_trip_reproduces_the_next_step_bitwise(opt_cls: type) -> None:
    torch.manual_seed(1)
    grads = [torch.randn(30, 20) for _ in range(3)]
    p = torch.nn.Parameter(torch.randn(30, 20))
    opt = opt_cls([p], lr=1e-2, lr_dropout=0.3, seed=11)
    for g in grads[:2]:
        p.grad = g.clone()
        opt.step()
    buffer = io.BytesIO()
    torch.save({"param": p.detach().clone(), "opt": opt.state_dict()}, buffer)

    def load() -> dict:
        buffer.seek(0)  # a fresh copy per optimiser: loading shares tensors with the loaded dict
        return torch.load(buffer, weights_only=True)  # as checkpoint.load_checkpoint does

    saved = load()

    q = torch.nn.Parameter(saved["param"].clone())
    resumed = opt_cls([q], lr=1e-2, lr_dropout=0.3, seed=999)  # the seed must not matter after loading
    resumed.load_state_dict(saved["opt"])
    fresh_q = torch.nn.Parameter(saved["param"].clone())
    fresh = opt_cls([fresh_q], lr=1e-2, lr_dropout=0.3, seed=999)
    fresh.load_state_dict({k: v for k, v in load()["opt"].items() if k != "lr_dropout_rng"})
    for param, optimizer in ((p, opt), (q, resumed), (fresh_q, fresh)):
        param.grad = grads[2].clone()
        optimizer.step()
    assert torch.equal(q.detach(), p.detach())
    for name in opt.state[p]:
        assert torch.equal(resumed.state[q][name], opt.state[p][name])
    assert not torch.equal(fresh_q.detach(), p.detach())  # without the RNG state the masks differ


def test_lr_schedule_values() -> None:
    lr = 5e-5
    assert lr_at(0, lr, True) == lr
    assert lr_at(125, lr, True) == pytest.approx(lr / 2, abs=1e-18)
    assert lr_at(250, lr, True) == pytest.approx(0.0, abs=1e-20)
    assert lr_at(500, lr, True) == pytest.approx(lr, rel=1e-12)
    assert lr_at(100, lr, True) == pytest.approx(lr * (math.cos(0.4 * math.pi) + 1) / 2)
    assert all(lr_at(s, lr, False) == lr for s in (0, 125, 250, 500))


def test_clip_grad_norm_scales_to_one_over_all_grads() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])  # global norm 13
    norm = clip_grad_norm([a, b])
    assert norm.item() == pytest.approx(13.0)
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0]) / 13)
    torch.testing.assert_close(b.grad, torch.tensor([12.0]) / 13)
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0, rel=1e-6)


def test_clip_grad_norm_leaves_small_grads_untouched() -> None:
    a = torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([0.1, -0.2, 0.3])
    before = a.grad.clone()
    norm = clip_grad_norm([a, torch.nn.Parameter(torch.zeros(2))])
    assert norm.item() == pytest.approx(math.sqrt(0.14), rel=1e-6)
    assert torch.equal(a.grad, before)  # no epsilon: exactly unchanged below the threshold
    b = torch.nn.Parameter(torch.zeros(2))
    b.grad = torch.tensor([1.0, 0.0])  # norm exactly 1: DFL leaves it (torch's +1e-6 would shrink it)
    clip_grad_norm([b])
    assert torch.equal(b.grad, torch.tensor([1.0, 0.0]))


def test_build_optimizer_follows_the_config() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, OptimConfig(lr=1e-4, lr_dropout=True))
    assert isinstance(opt, AdaBelief)
    assert opt.param_groups[0]["lr"] == 1e-4 and opt.param_groups[0]["lr_dropout"] == 0.3
    pre = build_optimizer(params, OptimConfig(lr_dropout=True), pretrain=True)
    assert pre.param_groups[0]["lr_dropout"] == 1.0
    assert not effective_lr_dropout(OptimConfig(lr_dropout=True), pretrain=True)
    assert isinstance(build_optimizer(params, OptimConfig(optimizer="rmsprop")), RMSprop)


def test_invalid_keep_probability_is_rejected() -> None:
    with pytest.raises(ValueError, match="keep probability"):
        AdaBelief([torch.nn.Parameter(torch.zeros(1))], lr_dropout=0.0)


def test_clip_grad_norm_mixed_dtypes_norm_in_fp32() -> None:
    a = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0], dtype=torch.bfloat16), torch.tensor([12.0])
    norm = clip_grad_norm([a, b])
    assert norm.dtype == torch.float32 and norm.item() == pytest.approx(13.0)
    torch.testing.assert_close(b.grad, torch.tensor([12.0 / 13]))
    torch.testing.assert_close(a.grad.float(), torch.tensor([3.0, 4.0]) / 13, rtol=1e-2, atol=0)


def test_steps_touch_params_of_several_dtypes() -> None:
    # Buckets per (device, dtype): a float64 and a float32 parameter in one group both follow the rule.
    a = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(3))
    opt = RMSprop([a, b], lr=0.1)
    a.grad, b.grad = torch.full((3,), 2.0, dtype=torch.float64), torch.full((3,), 2.0)
    opt.step()
    expected = -0.1 * 2.0 / (math.sqrt(0.1 * 4.0) + 1e-6)
    assert a.dtype == torch.float64 and a[0].item() == pytest.approx(expected, rel=1e-12)
    assert b[0].item() == pytest.approx(expected, rel=1e-6)


def test_loading_keeps_the_configured_hyper_parameters() -> None:
    # Turning lr dropout on between sessions must take effect; the moments still come from the file.
    p = torch.nn.Parameter(torch.zeros(4))
    old = build_optimizer([p], OptimConfig(lr=1e-4))
    p.grad = torch.ones(4)
    old.step()
    q = torch.nn.Parameter(p.detach().clone())
    new = build_optimizer([q], OptimConfig(lr=2e-4, lr_dropout=True))
    new.load_state_dict(old.state_dict())
    assert new.param_groups[0]["lr_dropout"] == 0.3 and new.param_groups[0]["lr"] == 2e-4
    assert torch.equal(new.state[q]["exp_avg"], old.state[p]["exp_avg"])
