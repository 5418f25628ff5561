"""DeepFaceLab's optimisers (spec §4): AdaBelief and RMSprop variants, lr dropout, lr schedule, clipping.

DeepFaceLab's optimisers differ from the textbook ones in ways that change training, so we implement
them rather than reuse ``torch.optim``:

* **AdaBelief**: ``m ← β1·m + (1-β1)·g``; ``v ← β2·v + (1-β2)·(g - m)²`` with the *new* m;
  ``w ← w - lr·m / (√v + 1e-6)``. No bias correction, no eps inside the square root.
* **RMSprop**: ``a ← 0.9·a + 0.1·g²``; ``w ← w - lr·g / (√a + 1e-6)``; no momentum.
* **lr dropout**: each step multiplies every weight's update by a fresh Bernoulli mask that keeps an
  update with probability 0.3; the moments still update everywhere.

1e-6 is ``np.finfo(np.float32).resolution``, DFL's epsilon. Updates use ``torch._foreach_*``
multi-tensor kernels: a SAEHD model has ~100 parameter tensors and per-tensor kernels would be
launch-bound on a GPU.

**State names** (what the DeepFaceLab importer fills in): AdaBelief ``state[p]['exp_avg']`` = DFL's
``ms_<var>`` and ``state[p]['exp_avg_var']`` = ``vs_<var>``; RMSprop ``state[p]['square_avg']`` =
``acc_<var>``. Each has the parameter's shape (DFL stores them with the TF variable's layout, so the
importer applies the same transpose as for the weight).

**Determinism.** The lr-dropout masks come from a ``torch.Generator`` owned by the optimiser, one
per device type, seeded with ``seed``; its state is saved in ``state_dict()['lr_dropout_rng']`` so a
resumed run draws the same masks. Under DDP every rank must use the *same* seed: each rank steps its
own replica with the same averaged gradients, and different masks would make the replicas diverge.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from torchsae.config import OptimConfig

DFL_EPSILON = 1e-6  # np.finfo(np.float32).resolution
LR_DROPOUT_KEEP = 0.3  # DFL's lr_dropout probability: the chance an update is *kept*
LR_COS_PERIOD = 500  # iterations per cycle of the cosine schedule that lr dropout enables
MAX_GRAD_NORM = 1.0  # DFL's clipnorm when clipgrad is on

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def lr_at(step: int, base_lr: float, lr_dropout: bool) -> float:
    """The learning rate DFL uses at optimiser iteration ``step`` (0 for the first update).

    With lr dropout on, DFL also enables a cosine cycle ``lr·(cos(2π·step/500) + 1)/2``: full lr at
    steps 0, 500, 1000, ..., zero at 250, 750, ... Without it, the lr is constant.
    """
    if not lr_dropout:
        return base_lr
    return base_lr * (math.cos(2.0 * math.pi * step / LR_COS_PERIOD) + 1.0) / 2.0


def effective_lr_dropout(optim_cfg: OptimConfig, pretrain: bool = False) -> bool:
    """Whether lr dropout (and its cosine schedule) is active: pretraining forces it off (spec §4).

    The trainer reads ``optim.lr_dropout`` of ``train.pretrain.effective_config``, which applies this
    rule; this helper (and ``build_optimizer(pretrain=)``) serve callers holding a stored config."""
    return bool(optim_cfg.lr_dropout) and not pretrain


class _DFLOptimizer(Optimizer):
    """Shared parts: per-parameter state init, lr-dropout masks from an owned generator, state_dict."""

    _state_names: tuple[str, ...] = ()

    def __init__(self, params: Params, defaults: dict[str, Any], seed: int) -> None:
        if not 0.0 < defaults["lr_dropout"] <= 1.0:
            raise ValueError(f"lr_dropout keep probability must be in (0, 1], got {defaults['lr_dropout']}")
        super().__init__(params, defaults)
        self._seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending_rng: dict[str, torch.Tensor] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        """The mask generator for ``device``'s type, created lazily (restoring a loaded state)."""
        key = device.type
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed)
            if key in self._pending_rng:
                gen.set_state(self._pending_rng.pop(key))
            elif self._pending_rng:
                warnings.warn(
                    f"lr-dropout RNG state was saved on {sorted(self._pending_rng)}, now on {key}: "
                    "masks restart from the seed, so this resume is not bit-exact",
                    stacklevel=3,
                )
            self._generators[key] = gen
        return self._generators[key]

    def _collect(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list]]:
        """Parameters with gradients, their gradients, and their state tensors (zeros on first use)."""
        params, grads = [], []
        states: list[list[torch.Tensor]] = [[] for _ in self._state_names]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if not state:
                for name in self._state_names:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            for i, name in enumerate(self._state_names):
                states[i].append(state[name])
        return params, grads, states

    def _dropout_masks(self, params: list[torch.Tensor], keep: float) -> list[torch.Tensor] | None:
        """One fresh 0/1 mask per parameter (1 with probability ``keep``), drawn in parameter order."""
        if keep >= 1.0:
            return None
        return [torch.empty_like(p).bernoulli_(keep, generator=self._generator(p.device)) for p in params]

    @staticmethod
    def _by_device(*lists: list) -> list[tuple[list, ...]]:
        """Split parallel lists by (device, dtype): foreach kernels need one of each per call."""
        buckets: dict[tuple[torch.device, torch.dtype], tuple[list, ...]] = {}
        for items in zip(*lists, strict=True):
            key = (items[0].device, items[0].dtype)
            bucket = buckets.setdefault(key, tuple([] for _ in lists))
            for target, item in zip(bucket, items, strict=True):
                target.append(item)
        return list(buckets.values())

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient (see :meth:`_update`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = self._collect(group)
            if not params:
                continue
            masks = self._dropout_masks(params, group["lr_dropout"])
            n = 2 + len(states)
            for bucket in self._by_device(params, grads, *states, *([masks] if masks is not None else [])):
                self._update(
                    group, bucket[0], bucket[1], bucket[2:n], bucket[n] if masks is not None else None
                )
        return loss

    def _update(
        self, group: dict[str, Any], params: list, grads: list, states: tuple, masks: list | None
    ) -> None:
        """Update one (device, dtype) bucket of ``group``: the optimiser's own rule."""
        raise NotImplementedError

    @staticmethod
    def _apply(params: list, numer: list, denom: list, lr: float, masks: list | None) -> None:
        """``w ← w - lr·(numer/denom)`` (times the dropout mask when there is one).

        The same arithmetic with and without a mask (not a fused addcdiv in one case only), so a kept
        weight moves by exactly the amount it would without lr dropout.
        """
        update = torch._foreach_div(numer, denom)
        if masks is not None:
            torch._foreach_mul_(update, masks)
        torch._foreach_add_(params, update, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        """The usual optimiser state plus ``lr_dropout_rng``: {device type: generator state}."""
        state = super().state_dict()
        rng = {key: gen.get_state() for key, gen in self._generators.items()}
        rng.update({k: v for k, v in self._pending_rng.items() if k not in rng})
        state["lr_dropout_rng"] = rng
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the moments and the lr-dropout generator state (for an exact resume).

        The hyper-parameters (lr, lr_dropout, betas, eps, rho) stay those this optimiser was built
        with: the run's config is the source of truth, so turning lr dropout on or off between
        sessions takes effect, as it does in DeepFaceLab. torch's default would restore the old ones.
        """
        state_dict = dict(state_dict)
        rng = state_dict.pop("lr_dropout_rng", None) or {}
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, values in zip(self.param_groups, hyper, strict=True):
            group.update(values)
        self._generators = {}
        self._pending_rng = {key: value.clone().cpu() for key, value in rng.items()}


class AdaBelief(_DFLOptimizer):
    """DeepFaceLab's AdaBelief (no bias correction, eps outside the sqrt); see the module docstring.

    ``lr_dropout`` is the keep probability of each weight's update (1.0 = off, DFL uses 0.3).
    """

    _state_names = ("exp_avg", "exp_avg_var")

    def __init__(
        self,
        params: Params,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = DFL_EPSILON,
        lr_dropout: float = 1.0,
        seed: int = 0,
    ) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "lr_dropout": lr_dropout}
        super().__init__(params, defaults, seed)

    def _update(
        self, group: dict[str, Any], params: list, grads: list, states: tuple, masks: list | None
    ) -> None:
        beta1, beta2 = group["betas"]
        m, v = states
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1.0 - beta1)  # m ← β1·m + (1-β1)·g
        diff = torch._foreach_sub(grads, m)  # uses the new m, as DFL does
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, diff, diff, value=1.0 - beta2)
        del diff  # its memory goes back to the allocator before denom and the update are allocated
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])
        self._apply(params, m, denom, group["lr"], masks)


class RMSprop(_DFLOptimizer):
    """DeepFaceLab's RMSprop (ρ 0.9, no momentum, eps outside the sqrt); see the module docstring."""

    _state_names = ("square_avg",)

    def __init__(
        self,
        params: Params,
        lr: float = 5e-5,
        rho: float = 0.9,
        eps: float = DFL_EPSILON,
        lr_dropout: float = 1.0,
        seed: int = 0,
    ) -> None:
        defaults = {"lr": lr, "rho": rho, "eps": eps, "lr_dropout": lr_dropout}
        super().__init__(params, defaults, seed)

    def _update(
        self, group: dict[str, Any], params: list, grads: list, states: tuple, masks: list | None
    ) -> None:
        (square_avg,) = states
        torch._foreach_mul_(square_avg, group["rho"])
        torch._foreach_addcmul_(square_avg, grads, grads, value=1.0 - group["rho"])  # a ← ρ·a + (1-ρ)·g²
        denom = torch._foreach_sqrt(square_avg)
        torch._foreach_add_(denom, group["eps"])
        self._apply(params, grads, denom, group["lr"], masks)


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float = MAX_GRAD_NORM) -> torch.Tensor:
    """Scale all gradients by ``max_norm / max(norm, max_norm)``, norm = global L2 norm in fp32.

    This is DFL's clipnorm (a no-op when the norm is at most ``max_norm``; no epsilon added, unlike
    ``torch.nn.utils.clip_grad_norm_``). Returns the norm before clipping as a 0-d fp32 tensor, without
    a host sync. Under AMP, unscale the gradients first (``GradScaler.unscale_``).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    buckets = [bucket for (bucket,) in _DFLOptimizer._by_device(grads)]
    norms: list[torch.Tensor] = []
    for bucket in buckets:
        if bucket[0].dtype == torch.float32:
            norms.extend(n.to(device) for n in torch._foreach_norm(bucket))  # one multi-tensor kernel
        else:
            norms.extend(torch.linalg.vector_norm(g, dtype=torch.float32).to(device) for g in bucket)
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = max_norm / torch.clamp(total, min=max_norm)
    for bucket in buckets:
        torch._foreach_mul_(bucket, scale.to(bucket[0].device, bucket[0].dtype))
    return total


def build_optimizer(
    params: Params, optim_cfg: OptimConfig, *, pretrain: bool = False, seed: int = 0
) -> _DFLOptimizer:
    """The optimiser ``optim_cfg`` names, with lr dropout (keep 0.3) when it is on and not pretraining.

    ``seed`` seeds the lr-dropout masks; pass the same value on every DDP rank. The trainer sets
    ``group['lr'] = lr_at(step, optim_cfg.lr, effective_lr_dropout(optim_cfg, pretrain))`` before
    each step and calls :func:`clip_grad_norm` first when ``optim_cfg.clipgrad`` is on.
    """
    optim_cfg.validate()
    keep = LR_DROPOUT_KEEP if effective_lr_dropout(optim_cfg, pretrain) else 1.0
    cls = AdaBelief if optim_cfg.optimizer == "adabelief" else RMSprop
    return cls(params, lr=optim_cfg.lr, lr_dropout=keep, seed=seed)
