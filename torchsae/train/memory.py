"""Memory of one training step: measured estimates and the budget planner (activation recompute: recompute.py).

Why: DeepFaceLab users with 8 GB cards run out of memory above ~224 px and are told to grow their
page file. Given ``--memory-budget`` (default on a GPU: its free memory), the trainer asks
:func:`plan_memory` for the micro-batch, the gradient accumulation that keeps the requested batch,
the activation recompute and the AMP mode, and prints the plan with its predicted peak.

Predictions come from measurement, never from a formula of the architecture:

* on a GPU, :func:`cuda_probe_peak` runs two real optimiser steps at the candidate setting and reads
  ``torch.cuda.max_memory_allocated``;
* elsewhere, :func:`estimate_step_memory` runs the step's forward under ``FakeTensorMode`` (shapes and
  dtypes only, nothing allocated, a second or two even at 384 px) and counts the tensors autograd
  saves for backward with ``saved_tensors_hooks``, once per storage, plus parameters, gradients,
  optimiser state and the batch. Under AMP the saved tensors have the dtypes autocast gives them
  (bf16 activations, fp32 loss maths), because the fake forward runs under the same autocast.

The CPU estimate's peak adds a backward working set that is a rule, not a measurement: twice the
largest saved tensor (the gradient in flight and the one it produces) plus the largest recomputed
block that backward recomputes; and it compares that with the optimiser's update, whose foreach
temporaries (see ``OPTIMIZER_TEMPORARIES``) are whole copies of the trainable weights.
"""

from __future__ import annotations

import functools
import gc
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from torchsae.config import Config
from torchsae.errors import ConfigError, TorchSAEError
from torchsae.losses.filters import kernel_cache_scope
from torchsae.train.precision import resolve_amp
from torchsae.train.recompute import RECOMPUTE_MODES, apply_recompute

FIT_FRACTION = 0.9  # a plan must predict at most this share of the budget (allocator slack, CUDA context)
MIN_FAST_MICRO_BATCH = 4  # below this a GPU step is launch-bound; try recompute before going smaller
# whole-weight-sized temporaries of one optimiser update (torchsae.optim's foreach code):
# AdaBelief g-m, sqrt(v)+eps, the update; RMSprop sqrt(a)+eps, the update; +1 for lr-dropout masks
OPTIMIZER_TEMPORARIES = {"adabelief": 3, "rmsprop": 2}
OPTIMIZER_STATES = {"adabelief": 2, "rmsprop": 1}
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IEC = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


class MemoryBudgetError(TorchSAEError):
    """No micro-batch, recompute or AMP setting brings the step under the memory budget."""


def parse_bytes(text: str | int) -> int:
    """``'8GiB'`` -> 8·2³⁰, ``'8GB'``/``'8G'`` -> 8·10⁹, ``'512MiB'``, ``'1.5GiB'``, plain bytes.

    IEC units (KiB, MiB, GiB, TiB) are powers of two; SI ones (KB/K, MB/M, GB/G, TB/T) powers of ten.
    """
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(text), flags=re.IGNORECASE)
    if match is None:
        raise ConfigError(f"train.memory_budget {text!r}: expected a size such as 8GiB, 7.5GB or 6000MiB")
    unit = (match.group(2) or "").lower()
    factor = _IEC[unit] if unit.endswith("i") else _UNITS[unit]
    value = int(float(match.group(1)) * factor)
    if value <= 0:
        raise ConfigError(f"train.memory_budget {text!r}: must be positive")
    return value


def format_bytes(count: float) -> str:
    """``6.12 GiB`` style, for plans and tables."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} B"


def _storage_key(tensor: torch.Tensor) -> int:
    """Identity of the storage behind ``tensor`` (views share it); works for fake tensors too."""
    return tensor.untyped_storage()._cdata


class SavedTensorMeter:
    """Bytes of the tensors autograd saves, each storage counted once, ``exclude``'s storages never.

    Use :meth:`hooks` around a forward pass. The packed tensors are kept (as autograd keeps them), so
    a storage key cannot be reused by a later allocation while it is counted.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.exclude = {_storage_key(t) for t in exclude}
        self.sizes: dict[int, int] = {}

    def add(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self.exclude and key not in self.sizes:
            self.sizes[key] = tensor.untyped_storage().nbytes()
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.add, lambda tensor: tensor)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def largest(self) -> int:
        return max(self.sizes.values(), default=0)


def saved_tensor_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, Any]:
    """``(bytes autograd saves while fn() runs, fn's result)``, deduplicated by storage."""
    meter = SavedTensorMeter(exclude)
    with meter.hooks():
        result = fn()
    return meter.total, result


class _SimulatedRecompute:
    """Recompute's memory effect under the meter: keep the block inputs, count internals apart."""

    def __init__(self, meter: SavedTensorMeter) -> None:
        self.meter = meter
        self.largest_block = 0

    def __call__(self, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        for arg in args:
            if isinstance(arg, torch.Tensor):
                self.meter.add(arg)
        inner = SavedTensorMeter()
        inner.exclude = self.meter.exclude
        with inner.hooks():
            out = forward(*args, **kwargs)
        self.largest_block = max(self.largest_block, inner.total)
        return out


# ---- the CPU estimate ----


@dataclass(frozen=True)
class MemoryEstimate:
    """One rank's step memory, in bytes, split by what holds it."""

    params: int
    grads: int
    optimizer_state: int
    ddp_buckets: int
    inputs: int
    activations: int
    backward_working: int
    optimizer_temporaries: int

    @property
    def static(self) -> int:
        """Held for the whole run: weights, gradients, optimiser moments, DDP buckets."""
        return self.params + self.grads + self.optimizer_state + self.ddp_buckets

    @property
    def peak(self) -> int:
        """Static memory and the batch, plus the larger of backward's and the update's working sets."""
        step = max(self.activations + self.backward_working, self.optimizer_temporaries)
        return self.static + self.inputs + step


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_step_memory(
    cfg: Config,
    micro_batch: int,
    recompute: str = "none",
    amp_dtype: torch.dtype | None = None,
    world_size: int = 1,
) -> MemoryEstimate:
    """Measure one step's memory on fake tensors (see the module docstring); fast at any size.

    ``cfg`` is the run's effective config (``train.pretrain.effective_config``), as the trainer plans
    with."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pipelines.synthetic import synthetic_batch
    from torchsae.train.step import build_parts

    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    parts = build_parts(cfg, "cpu", amp_dtype=amp_dtype, fake_mode=fake_mode)
    with fake_mode, kernel_cache_scope():  # no fake kernel may outlive the fake run
        all_params = list(parts.model.parameters())
        for disc in parts.discriminators.values():
            all_params += list(disc.parameters())
        meter = SavedTensorMeter(exclude=all_params)
        simulated = _SimulatedRecompute(meter)
        apply_recompute(parts.model, recompute, runner=simulated)
        batch = parts.loss_fn.prepare_targets(synthetic_batch(micro_batch, cfg.model.resolution, "cpu"))
        with meter.hooks():
            with parts.autocast(torch.device("cpu")):
                out = parts.model(batch["warped_a"], batch["warped_b"], parts.loss_fn.needs_swap_ng)
            parts.loss_fn(out, batch, parts.discriminators.get("code"), parts.discriminators.get("gan"))
        inputs = _nbytes(v for v in batch.values())

    name = cfg.optim.optimizer
    g_trainable = [p for p in parts.model.parameters() if p.requires_grad]
    d_params = [p for disc in parts.discriminators.values() for p in disc.parameters()]
    trainable = _nbytes(g_trainable) + _nbytes(d_params)
    temporaries = OPTIMIZER_TEMPORARIES[name] + (1 if cfg.optim.lr_dropout else 0)
    return MemoryEstimate(
        params=_nbytes(all_params),
        grads=trainable,
        optimizer_state=OPTIMIZER_STATES[name] * trainable,
        ddp_buckets=trainable if world_size > 1 else 0,
        inputs=inputs,
        activations=meter.total,
        backward_working=2 * meter.largest + simulated.largest_block,
        optimizer_temporaries=temporaries * _nbytes(g_trainable),
    )


# ---- the GPU probe ----


def cuda_probe_peak(
    cfg: Config, micro_batch: int, accum: int, recompute: str, device: torch.device, world_size: int = 1
) -> int:
    """Peak bytes of two real optimiser steps at this setting on ``device`` (``max_memory_allocated``).

    Two steps so that the optimiser state exists while the second one's activations do; with
    accumulation each step runs two micro-batches so that gradients exist during backward. The global
    RNG states are restored afterwards and everything is freed; an out-of-memory error means "does
    not fit" and returns a huge number.
    """
    from pipelines.synthetic import synthetic_batch
    from torchsae.train.speed import use_channels_last
    from torchsae.train.step import build_parts, g_step

    amp_dtype, use_scaler = resolve_amp(cfg.train.amp, device)
    parts = batch = None
    with torch.random.fork_rng(devices=[device]):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            parts = build_parts(cfg, device, amp_dtype=amp_dtype, use_scaler=use_scaler)
            use_channels_last(parts.model, device)  # as the trainer runs it
            apply_recompute(parts.model, recompute)
            batch = synthetic_batch(micro_batch, cfg.model.resolution, device)
            for _ in range(2):
                g_step(parts, [batch] * min(accum, 2))
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        except torch.OutOfMemoryError:
            peak = 2**62
        finally:
            del parts, batch
            gc.collect()
            torch.cuda.empty_cache()
    trainable = sum(p.numel() * 4 for p in _trainable_meta(cfg))
    return peak + (trainable if world_size > 1 else 0)


def _trainable_meta(cfg: Config) -> list[torch.Tensor]:
    from torchsae.models.registry import build_model

    with torch.device("meta"):
        return build_model(cfg.model).trainable_parameters(cfg.data.random_warp)


# ---- the planner ----


@dataclass(frozen=True)
class MemoryPlan:
    """How one rank runs the requested batch within the budget."""

    batch_size: int  # the effective batch per rank and side (micro_batch × grad_accum)
    micro_batch: int
    grad_accum: int
    recompute: str
    amp: str
    predicted_peak: int
    budget: int
    method: str

    def step_config(self, cfg: Config) -> Config:
        """``cfg`` with the micro-batch, accumulation and AMP the step runs with."""
        return cfg.updated(
            {"train": {"batch_size": self.micro_batch, "grad_accum": self.grad_accum, "amp": self.amp}}
        )

    def describe(self) -> str:
        accum = (
            f"{self.grad_accum} micro-batches of {self.micro_batch} (gradient accumulation)"
            if self.grad_accum > 1
            else "one pass"
        )
        return (
            f"Memory plan: batch {self.batch_size} per side in {accum}; activation recompute "
            f"{self.recompute}; amp {self.amp}; predicted peak {format_bytes(self.predicted_peak)} of a "
            f"{format_bytes(self.budget)} budget ({self.method})"
        )


Predictor = Callable[[Config, int, int, str], int]  # (config with amp, micro, accum, recompute) -> bytes


def resolve_budget(cfg: Config, device: torch.device) -> int | None:
    """``train.memory_budget`` in bytes; unset: the GPU's free memory, or None (no plan) elsewhere."""
    if cfg.train.memory_budget:
        return parse_bytes(cfg.train.memory_budget)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def cpu_estimate_predictor(device: torch.device, world_size: int = 1) -> Predictor:
    """A Predictor from :func:`estimate_step_memory` (AMP dtype as ``train.amp`` resolves on ``device``)."""

    def predict(cfg: Config, micro: int, accum: int, recompute: str) -> int:
        amp_dtype, _ = resolve_amp(cfg.train.amp, device)
        return estimate_step_memory(cfg, micro, recompute, amp_dtype, world_size).peak

    return predict


def _candidates(amp: str) -> list[tuple[str, str, bool]]:
    """(amp, recompute, full batch only) in the order tried: fastest first."""
    amps = [amp] if amp != "none" else ["none", "auto"]
    order = [(a, "none", True) for a in amps]
    return order + [(amps[-1], mode, False) for mode in RECOMPUTE_MODES]


def plan_memory(
    cfg: Config,
    device: torch.device,
    world_size: int = 1,
    budget: int | None = None,
    predictor: Predictor | None = None,
) -> MemoryPlan | None:
    """The fastest setting predicted to fit: full batch (turning on AMP first if it was off), then
    micro-batches of at least ``MIN_FAST_MICRO_BATCH`` with more recompute, then any micro-batch.

    The effective batch ``train.batch_size × train.grad_accum`` is kept; micro-batches divide it so
    every accumulated pass has the same size. Returns None when there is no budget (CPU, none given).
    """
    budget = budget if budget is not None else resolve_budget(cfg, device)
    if budget is None:
        return None
    if predictor is None:
        if device.type == "cuda":
            predictor = functools.partial(cuda_probe_peak, device=device, world_size=world_size)
            method = "measured: probe steps on the GPU, torch.cuda.max_memory_allocated"
        else:
            predictor = cpu_estimate_predictor(device, world_size)
            method = "estimated on the CPU from the tensors autograd saves"
    else:
        method = getattr(predictor, "method", "custom predictor")
    effective = cfg.train.batch_size * cfg.train.grad_accum
    divisors = [m for m in range(effective, 0, -1) if effective % m == 0]
    limit = int(budget * FIT_FRACTION)
    smallest: tuple[int, str] | None = None

    def fits(amp: str, recompute: str, micro: int) -> MemoryPlan | None:
        nonlocal smallest
        trial = cfg.updated({"train": {"amp": amp}})
        peak = predictor(trial, micro, effective // micro, recompute)
        if smallest is None or peak < smallest[0]:
            smallest = (peak, f"micro-batch {micro}, recompute {recompute}, amp {amp}")
        if peak > limit:
            return None
        return MemoryPlan(effective, micro, effective // micro, recompute, amp, peak, budget, method)

    for amp, recompute, full_only in _candidates(cfg.train.amp):
        sizes = (
            [effective] if full_only else [m for m in divisors if m >= min(effective, MIN_FAST_MICRO_BATCH)]
        )
        for plan in (fits(amp, recompute, m) for m in sizes):
            if plan is not None:
                return plan
    last_amp = _candidates(cfg.train.amp)[-1][0]
    for micro in [m for m in divisors if m < min(effective, MIN_FAST_MICRO_BATCH)]:
        plan = fits(last_amp, "all", micro)
        if plan is not None:
            return plan
    peak, setting = smallest or (math.inf, "?")
    raise MemoryBudgetError(
        f"train.memory_budget {format_bytes(budget)}: even {setting} needs {format_bytes(peak)} "
        f"(plans may use {FIT_FRACTION:.0%} of the budget); lower --resolution or the dims"
    )


def plan_for_run(cfg: Config, info: Any) -> MemoryPlan | None:
    """The trainer's plan: computed on rank 0 and used by every rank (``info`` is a ``DistInfo``).

    Every rank must accumulate the same number of micro-batches (DDP all-reduces once per step), so
    the ranks never plan separately; an error on rank 0 is raised on every rank.
    """
    outcome: MemoryPlan | str | None = None
    if info.is_main:
        try:
            outcome = plan_memory(cfg, info.device, info.world_size)
        except MemoryBudgetError as exc:
            outcome = str(exc)
    if info.distributed:
        box = [outcome]
        torch.distributed.broadcast_object_list(box, src=0)
        outcome = box[0]
    if isinstance(outcome, str):
        raise MemoryBudgetError(outcome)
    return outcome
