"""The memory estimate and budget planner (train.memory) and activation checkpointing (train.recompute).

References: saved-tensor bytes written out by hand for single ops; parameter counts from
tests/fixtures/param_counts.json (DeepFaceLab's own counts, spec §7); the estimate's growth with batch
(exactly affine in fp32) and with resolution (about quadratic); real gradients with and without
checkpointing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchsae.config import Config, ModelConfig
from torchsae.errors import ConfigError
from torchsae.train.memory import (
    FIT_FRACTION,
    MemoryBudgetError,
    estimate_step_memory,
    parse_bytes,
    plan_memory,
    saved_tensor_bytes,
)
from torchsae.train.recompute import apply_recompute, recompute_targets
from torchsae.train.step import build_parts, synthetic_batch

FIXTURES = Path(__file__).parent / "fixtures"
TINY = {"archi": "df-ud", "resolution": 64, "ae_dims": 32, "e_dims": 8, "d_dims": 8, "d_mask_dims": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**model: object) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(**{**TINY, **model})
    return cfg.validate()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 2**30),
        ("8GB", 8 * 10**9),
        ("8g", 8 * 10**9),
        ("1.5 GiB", 3 * 2**29),
        ("512MiB", 512 * 2**20),
        ("2048", 2048),
        (4096, 4096),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["eight gigs", "8 PB", "0GiB", ""])
def test_parse_bytes_rejects_nonsense(text: str) -> None:
    with pytest.raises(ConfigError, match="memory_budget"):
        parse_bytes(text)


def test_saved_tensor_bytes_matches_hand_counts() -> None:
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    # conv saves its input (its weight is excluded as a parameter); leaky_relu saves the conv output
    count, out = saved_tensor_bytes(lambda: F.leaky_relu(conv(x), 0.1), exclude=conv.parameters())
    assert count == 2 * 3 * 8 * 8 * 4 + 2 * 4 * 8 * 8 * 4
    # x * x saves x twice: one storage, counted once
    assert saved_tensor_bytes(lambda: x * x)[0] == x.numel() * 4
    # two views of one storage count the whole storage once
    assert saved_tensor_bytes(lambda: x[0] * x[1])[0] == x.numel() * 4
    # a bf16 copy is a new storage of half the bytes
    assert saved_tensor_bytes(lambda: x.bfloat16() * x.bfloat16())[0] == 2 * x.numel() * 2
    assert out.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("optimizer, states", [("adabelief", 2), ("rmsprop", 1)])
def test_static_memory_matches_the_parameter_count_fixture(optimizer: str, states: int) -> None:
    """df-ud 256 at DeepFaceLab's default dims: weights, grads and moments from spec §7's count."""
    counts = json.loads((FIXTURES / "param_counts.json").read_text())
    row = next(r for r in counts if r["archi"] == "df-ud" and r["resolution"] == 256)
    cfg = Config()
    cfg.model = ModelConfig(archi="df-ud", resolution=256, ae_dims=256, e_dims=64, d_dims=64, d_mask_dims=22)
    cfg.optim.optimizer = optimizer
    estimate = estimate_step_memory(cfg, 1)
    weights = row["total_autoencoder"] * 4
    assert estimate.params == weights
    assert estimate.grads == weights
    assert estimate.optimizer_state == states * weights
    assert estimate.ddp_buckets == 0
    assert estimate_step_memory(cfg, 1, world_size=2).ddp_buckets == weights
    # the batch: 8 channels per side (warped, target: 3; masks: 1 each), two sides, fp32, plus indices
    assert estimate.inputs == 2 * (8 * 256 * 256 * 4 + 8)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_fake_tensor_estimate_equals_the_real_saved_bytes(amp: torch.dtype | None) -> None:
    """The estimate's fake forward counts exactly what a real CPU forward + loss saves."""
    cfg = _config()
    parts = build_parts(cfg, "cpu", amp_dtype=amp)
    batch = synthetic_batch(2, TINY["resolution"], "cpu")

    def step() -> None:
        with parts.autocast(torch.device("cpu")):
            out = parts.model(batch["warped_a"], batch["warped_b"])
        parts.loss_fn(out, batch)

    real, _ = saved_tensor_bytes(step, exclude=parts.model.parameters())
    assert estimate_step_memory(cfg, 2, amp_dtype=amp).activations == real


def test_estimate_grows_affinely_with_batch() -> None:
    """fp32, no AMP: every saved activation has a batch axis, so the second difference is zero."""
    cfg = _config()
    acts = [estimate_step_memory(cfg, b).activations for b in (1, 2, 3)]
    per_sample = acts[1] - acts[0]
    assert per_sample > 0
    assert acts[2] - acts[1] == per_sample
    assert acts[0] >= per_sample  # the constant part (loss windows) is small: never negative
    peaks = [estimate_step_memory(cfg, b).peak for b in (1, 2)]
    assert peaks[1] > peaks[0]


def test_estimate_grows_about_quadratically_with_resolution() -> None:
    slopes = []
    for res in (64, 128):
        cfg = _config(resolution=res)
        slopes.append(estimate_step_memory(cfg, 2).activations - estimate_step_memory(cfg, 1).activations)
    assert 3.6 < slopes[1] / slopes[0] < 4.4


def test_bf16_autocast_shrinks_the_activations_but_not_below_half() -> None:
    cfg = _config()
    fp32 = estimate_step_memory(cfg, 2).activations
    bf16 = estimate_step_memory(cfg, 2, amp_dtype=torch.bfloat16).activations
    assert fp32 / 2 < bf16 < fp32  # conv activations halve; the loss maths stays fp32


def test_checkpointing_reduces_the_estimate_and_the_real_saved_bytes() -> None:
    cfg = _config()
    estimates = [estimate_step_memory(cfg, 2, mode).activations for mode in ("none", "decoder", "all")]
    assert estimates[0] > estimates[1] > estimates[2]
    batch = synthetic_batch(2, TINY["resolution"], "cpu")
    real = []
    for mode in ("none", "decoder", "all"):
        parts = build_parts(cfg, "cpu")
        apply_recompute(parts.model, mode)
        count, _ = saved_tensor_bytes(
            lambda p=parts: p.model(batch["warped_a"], batch["warped_b"]), exclude=parts.model.parameters()
        )
        real.append(count)
    assert real[0] > real[1] > real[2]


def test_checkpointing_keeps_outputs_and_gradients() -> None:
    cfg = _config()
    batch = synthetic_batch(2, TINY["resolution"], "cpu", seed=1)
    grads = []
    for mode in ("none", "all"):
        torch.manual_seed(0)
        parts = build_parts(cfg, "cpu")
        assert apply_recompute(parts.model, mode) == len(recompute_targets(parts.model, mode))
        out = parts.model(batch["warped_a"], batch["warped_b"])
        loss, _ = parts.loss_fn(out, batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in parts.model.named_parameters()})
        with torch.no_grad():  # previews: a plain call, nothing recomputed
            parts.model.swap(batch["warped_a"])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_recompute_targets() -> None:
    parts = build_parts(_config(), "cpu")
    decoder = recompute_targets(parts.model, "decoder")
    every = recompute_targets(parts.model, "all")
    decoder_modules = {
        id(m) for name in ("decoder_a", "decoder_b") for m in getattr(parts.model, name).modules()
    }
    assert decoder and all(id(m) in decoder_modules for m in decoder)
    assert len(every) > len(decoder) and set(map(id, decoder)) <= set(map(id, every))
    assert recompute_targets(parts.model, "none") == []
    with pytest.raises(ConfigError):
        recompute_targets(parts.model, "some")


def _linear_predictor(base: int, per_sample: dict[tuple[str, str], int]):
    """A hand-written stand-in for a measured predictor: base + micro × per-sample(amp, checkpoint)."""
    calls: list[tuple[str, int, int, str]] = []

    def predict(cfg: Config, micro: int, accum: int, checkpoint: str) -> int:
        calls.append((cfg.train.amp, micro, accum, checkpoint))
        return base + micro * per_sample[(cfg.train.amp, checkpoint)]

    predict.calls = calls  # type: ignore[attr-defined]
    return predict


PER_SAMPLE = {
    ("none", "none"): 100,
    ("auto", "none"): 60,
    ("auto", "decoder"): 40,
    ("auto", "all"): 30,
    ("bf16", "none"): 60,
    ("bf16", "decoder"): 40,
    ("bf16", "all"): 30,
}


@pytest.mark.parametrize(
    ("budget", "micro", "checkpoint", "amp"),
    [
        (1000 + 8 * 100, 8, "none", "none"),  # fits as asked
        (1000 + 8 * 60, 8, "none", "auto"),  # AMP first
        (1000 + 4 * 60, 4, "none", "auto"),  # then micro-batches of at least 4
        (1000 + 8 * 40, 4, "none", "auto"),  # micro-batches of 4 cost less than recomputing
        (1000 + 4 * 40, 4, "decoder", "auto"),  # then checkpointing, decoders first
        (1000 + 4 * 30, 4, "all", "auto"),
        (1000 + 2 * 30, 2, "all", "auto"),  # last resort: below 4
        (1000 + 1 * 30, 1, "all", "auto"),
    ],
)
def test_planner_picks_the_fastest_setting_that_fits(
    budget: int, micro: int, checkpoint: str, amp: str
) -> None:
    cfg = _config()
    cfg.train.batch_size, cfg.train.grad_accum = 4, 2  # effective 8
    predictor = _linear_predictor(1000, PER_SAMPLE)
    limit = int(budget / FIT_FRACTION) + 1  # the plan may use FIT_FRACTION of the budget
    plan = plan_memory(cfg, torch.device("cpu"), budget=limit, predictor=predictor)
    assert (plan.micro_batch, plan.grad_accum, plan.recompute, plan.amp) == (
        micro,
        8 // micro,
        checkpoint,
        amp,
    )
    assert plan.batch_size == 8 and plan.predicted_peak <= limit * FIT_FRACTION
    step = plan.step_config(cfg).train
    assert (step.batch_size, step.grad_accum, step.amp) == (micro, 8 // micro, amp)
    assert all(8 % m == 0 for _, m, _, _ in predictor.calls)  # equal micro-batches only


def test_planner_keeps_an_explicit_amp_and_fails_clearly() -> None:
    cfg = _config()
    cfg.train.amp = "bf16"
    predictor = _linear_predictor(1000, PER_SAMPLE)
    plan = plan_memory(cfg, torch.device("cpu"), budget=10**6, predictor=predictor)
    assert plan.amp == "bf16" and {c[0] for c in predictor.calls} == {"bf16"}
    with pytest.raises(MemoryBudgetError, match=r"memory_budget .*micro-batch 1, recompute all"):
        plan_memory(cfg, torch.device("cpu"), budget=1000, predictor=predictor)


def test_no_budget_on_the_cpu_means_no_plan() -> None:
    assert plan_memory(_config(), torch.device("cpu")) is None


def test_planner_with_the_cpu_estimate_micro_batches_to_fit() -> None:
    """Real estimates: a budget between the 2- and 4-sample checkpointed steps gives 2 × 2."""
    cfg = _config()
    cfg.train.batch_size, cfg.train.amp = 4, "bf16"
    two = estimate_step_memory(cfg, 2, "all", torch.bfloat16).peak
    four = estimate_step_memory(cfg, 4, "all", torch.bfloat16).peak
    assert two < four
    budget = int((two + four) / 2 / FIT_FRACTION)
    plan = plan_memory(cfg, torch.device("cpu"), budget=budget)
    assert (plan.micro_batch, plan.grad_accum, plan.recompute) == (2, 2, "all")
    assert plan.predicted_peak == two
    assert "2 micro-batches of 2" in plan.describe() and "estimated on the CPU" in plan.describe()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_plan_fits_the_measured_peak() -> None:
    """On a GPU the probe's plan must hold in a real step, and the CPU estimate must be in range."""
    from torchsae.train.step import g_step, split_batch

    device = torch.device("cuda")
    cfg = _config(resolution=128, ae_dims=64, e_dims=16, d_dims=16, d_mask_dims=6)
    cfg.train.batch_size = 8
    budget = 2**30
    plan = plan_memory(cfg, device, budget=budget)
    step_cfg = plan.step_config(cfg)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    parts = build_parts(step_cfg, device)
    apply_recompute(parts.model, plan.recompute)
    batch = synthetic_batch(8, 128, device)
    for _ in range(2):
        g_step(parts, list(split_batch(batch, plan.micro_batch)))
    measured = torch.cuda.max_memory_allocated(device) - base
    assert measured <= budget
    estimate = estimate_step_memory(step_cfg, plan.micro_batch, plan.recompute).peak
    assert 0.5 < estimate / measured < 2.0
