"""Record what an optimiser step sees and does, for tests that compare differently batched updates.

Why not compare the weights after the step: DeepFaceLab's optimisers divide by ``√v + 1e-6``, so on
the first step a gradient entry g ≪ 1e-6 moves its weight by about ``lr·g·0.1/1e-6`` (AdaBelief) or
``lr·g/1e-6`` (RMSprop): float32 summation-order noise in near-zero gradients (which differs between
CPUs, thread counts and SIMD widths) becomes a weight difference up to ~100-1000x larger. The tests
therefore compare the *gradients* the optimiser receives, each tensor relative to its own scale, and
check separately that the optimiser applied its rule exactly once to exactly those gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 2^-23 ≈ 1.19e-7

# Relative tolerance for one gradient tensor computed with a different summation order (another
# micro-batch split, batch size, thread count or SIMD width), as max|Δg| / max|g| over the tensor.
# Derivation: each gradient entry is a float32 sum of n products, and a convolution's weight gradient in
# these tests sums n ≈ batch·H·W·(tiny channels) ≲ 10^5 terms; reordering such a sum moves it by about
# √n·eps relative to the terms' magnitude (random-walk rounding, ≈ 3.8e-5 for n = 10^5), and the
# backward pass compounds that over ≲ 10 layers: ≲ 4e-4 relative to the largest entry, the tensor's
# scale. 1e-3 covers it on any SIMD width. A wiring error — a micro-batch dropped or counted twice, a
# mean where a sum belongs, a stale gradient — changes gradients by at least 1/k of their scale
# (k ≤ 4 micro-batches here, so ≥ 0.25), far above 1e-3.
GRAD_RTOL = 1e-3


@dataclass
class StepRecord:
    """One optimiser step: its parameters' values before and after, their gradients, the lrs."""

    optimizer: torch.optim.Optimizer
    before: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor | None] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    after: list[torch.Tensor] = field(default_factory=list)


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


@contextmanager
def record_optimizer_steps(kind: type[torch.optim.Optimizer] | None = None) -> Iterator[list[StepRecord]]:
    """Every ``step()`` of optimisers of class ``kind`` (all when None) made inside the block, in order."""
    records: list[StepRecord] = []

    def pre(optimizer, args, kwargs):
        if kind is None or isinstance(optimizer, kind):
            params = _params(optimizer)
            records.append(
                StepRecord(
                    optimizer,
                    [p.detach().clone() for p in params],
                    [None if p.grad is None else p.grad.detach().clone() for p in params],
                    [group["lr"] for group in optimizer.param_groups],
                )
            )

    def post(optimizer, args, kwargs):
        if kind is None or isinstance(optimizer, kind):
            assert records[-1].optimizer is optimizer
            records[-1].after = [p.detach().clone() for p in _params(optimizer)]

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def relative_grad_error(grad: torch.Tensor, reference: torch.Tensor) -> float:
    """max|grad − reference| / max|reference| (0 when both are all zeros)."""
    scale = reference.abs().max().item()
    diff = (grad - reference).abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_same_gradients(
    grads: list[torch.Tensor | None],
    reference: list[torch.Tensor | None],
    names: list[str] | None = None,
    rtol: float = GRAD_RTOL,
) -> float:
    """Each gradient equals the reference within ``rtol`` of that tensor's scale; returns the worst ratio."""
    assert len(grads) == len(reference)
    worst = 0.0
    for i, (g, ref) in enumerate(zip(grads, reference, strict=True)):
        name = names[i] if names else str(i)
        assert (g is None) == (ref is None), f"{name}: gradient present in only one run"
        if g is None:
            continue
        error = relative_grad_error(g, ref)
        assert error <= rtol, f"{name}: gradient differs by {error:.3g} of its scale (tolerance {rtol:.1g})"
        worst = max(worst, error)
    return worst


def replay_step(record: StepRecord, optimizer_factory) -> list[torch.Tensor]:
    """The weights a fresh optimiser (``optimizer_factory(params)``) gives from the record's weights and
    gradients in one step, at the record's lrs: equal to ``record.after`` bit for bit when the recorded
    step was exactly one application of that optimiser's rule (one lr-dropout draw included)."""
    params = [b.clone().requires_grad_(True) for b in record.before]
    for p, g in zip(params, record.grads, strict=True):
        p.grad = None if g is None else g.clone()
    optimizer = optimizer_factory(params)
    for group, lr in zip(optimizer.param_groups, record.lrs, strict=True):
        group["lr"] = lr
    optimizer.step()
    return [p.detach() for p in params]
