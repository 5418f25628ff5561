"""The README's memory table: the largest batch that fits 8, 12 and 24 GiB, per preset and archi.

Every figure is :func:`torchsae.train.memory.estimate_step_memory`: the forward pass runs on fake
tensors under the AMP mode's autocast and the tensors autograd saves are counted (deduplicated by
storage), plus weights, gradients, AdaBelief moments, the batch and the update's temporaries. No GPU
is involved, so the table says "CPU saved-tensor estimate"; a plan on a GPU measures instead.

    python benchmarks/memory_table.py [--output docs/MEMORY.md]

A batch "fits" when its predicted peak is at most ``FIT_FRACTION`` (90 %) of the budget, the rule the
trainer's planner uses. Batches are per side (A and B each), in one pass (no accumulation).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from torchsae.config import PRESETS, Config, ModelConfig, preset
from torchsae.fileio import atomic_write_text
from torchsae.train.memory import FIT_FRACTION, estimate_step_memory, format_bytes, plan_memory

BUDGETS_GIB = (8, 12, 24)
SETTINGS = (
    ("fp32", None, "none"),
    ("bf16", torch.bfloat16, "none"),
    ("bf16+recompute", torch.bfloat16, "all"),
)
MAX_BATCH = 256
DOCS = Path(__file__).resolve().parent.parent / "docs" / "MEMORY.md"


def _config(model: ModelConfig) -> Config:
    cfg = Config()
    cfg.model = model
    return cfg.validate()


def largest_batch(cfg: Config, amp: torch.dtype | None, recompute: str, limit: int) -> int:
    """The largest per-side batch whose estimated peak is ≤ limit (0: not even 1), by bisection."""

    def fits(batch: int) -> bool:
        return estimate_step_memory(cfg, batch, recompute, amp).peak <= limit

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= MAX_BATCH and fits(high):
        low, high = high, high * 2
    high = min(high, MAX_BATCH + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _cell(size: int) -> str:
    return "–" if size == 0 else f"{MAX_BATCH}+" if size >= MAX_BATCH else str(size)


def models() -> list[tuple[str, ModelConfig]]:
    """(dims label, config): df-ud and liae-ud at DeepFaceLab's default dims, then the preset as
    ``--model-size`` gives it (its own archi and dims), per resolution."""
    rows = []
    for resolution in PRESETS:
        for archi in ("df-ud", "liae-ud"):
            rows.append(("DFL default", ModelConfig(archi=archi, resolution=resolution)))
        rows.append((f"--model-size {resolution} preset", preset(resolution)))
    return rows


def table() -> str:
    head = "| res | archi | dims (ae/e/d/mask) | weights + grads + moments | update temporaries | "
    head += " | ".join(f"{b} GiB: fp32 / bf16 / bf16+recompute" for b in BUDGETS_GIB) + " |"
    lines = [head, "|" + "---|" * (5 + len(BUDGETS_GIB))]
    for label, model in models():
        cfg = _config(model)
        one = estimate_step_memory(cfg, 1)
        cells = []
        for budget in BUDGETS_GIB:
            limit = int(budget * 2**30 * FIT_FRACTION)
            sizes = [largest_batch(cfg, amp, ck, limit) for _, amp, ck in SETTINGS]
            cells.append(" / ".join(_cell(size) for size in sizes))
        dims = f"{model.ae_dims}/{model.resolved_e_dims}/{model.resolved_d_dims}/{model.resolved_d_mask_dims}"
        lines.append(
            f"| {model.resolution} | {model.archi} | {dims} ({label}) | {format_bytes(one.static)} | "
            f"{format_bytes(one.optimizer_temporaries)} | " + " | ".join(cells) + " |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def target_plans() -> list[str]:
    """The issue's targets and the presets at the default batch, as the planner resolves them on 8 GiB."""
    out = []
    for resolution, batch in ((256, 8), (384, 4)):
        cfg = _config(ModelConfig(archi="df-ud", resolution=resolution))
        cfg.train.batch_size = batch
        plan = plan_memory(cfg, torch.device("cpu"), budget=8 * 2**30)
        out.append(f"- df-ud {resolution}, default dims, batch {batch}: {plan.describe()}")
    for resolution in PRESETS:  # the presets at the trainer's default batch
        cfg = _config(preset(resolution))
        plan = plan_memory(cfg, torch.device("cpu"), budget=8 * 2**30)
        out.append(
            f"- `--model-size {resolution}` ({cfg.model.archi}), batch {cfg.train.batch_size}: {plan.describe()}"
        )
    return out


def document(rows: str, plans: list[str], command: str, seconds: float) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# Memory: which batch fits which card

The largest batch **per side** (A and B each) that one training step fits in 8, 12 and 24 GiB, in one
pass without gradient accumulation, for each preset resolution and archi at DeepFaceLab's default dims
(ae 256, e 64, d 64, mask 22) and for each `--model-size` preset as it is (its archi and dims). "–": not even batch 1 fits.

**How these figures were obtained: CPU saved-tensor estimates, not GPU measurements.** Each is
`torchsae.train.memory.estimate_step_memory`: the step's forward pass runs on fake tensors (no
memory is allocated) under the AMP mode's autocast — bf16 activations and the loss maths in fp32 —
and the tensors autograd saves for backward are counted once per storage; weights, gradients,
AdaBelief's two moments, the fp32 batch and the optimiser update's temporaries (three weight-sized
buffers) are added, plus a backward working set of twice the largest saved tensor. A batch fits
when that predicted peak is at most {FIT_FRACTION:.0%} of the budget (room for the CUDA context and
allocator fragmentation) — the rule `--memory-budget` uses. No GPU was available when this table
was made; on a GPU the trainer's planner measures with probe steps (`torch.cuda.max_memory_allocated`)
instead, and GPU-measured rows will be added here when they exist.

Columns per budget: fp32 (no `--amp`) / bf16 (`--amp bf16`) / bf16 with every encoder and decoder
block recomputed (what `--memory-budget` turns on when needed); "{MAX_BATCH}+": the search stops there.
The discriminators are off (true_face_power and gan_power 0, DeepFaceLab's defaults); turned on, they
add their weights, moments and activations.

{rows}

Larger effective batches still train on a small card: `--memory-budget 8GiB` splits the batch into
micro-batches with gradient accumulation (the same update as the full batch: DeepFaceLab sums the
loss over the batch), so what must fit is one micro-batch. The targets, as the planner resolves them
for an 8 GiB budget:

{chr(10).join(plans)}

The fixed part is weights + gradients + AdaBelief's moments (4× the weights) plus, during the
update, the optimiser's temporaries (3× the trainable weights: `torchsae.optim` builds g−m, √v+ε and
the update as whole foreach lists). It grows with the inter's first dense layer, 8·e·(R/16)²·ae
weights (R/32 with the `t` option), which is why the presets deepen rather than widen with resolution.

Generated {stamp} by `{command}` in {seconds:.0f} s.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    start = time.time()
    rows = table()
    plans = target_plans()
    command = "python benchmarks/memory_table.py" + (
        "" if args.output == DOCS else f" --output {args.output}"
    )
    atomic_write_text(args.output, document(rows, plans, command, time.time() - start))
    print("\n".join(plans))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
