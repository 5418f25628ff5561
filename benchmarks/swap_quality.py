"""Swap quality for a fixed step budget: the demo's score, recorded in ``benchmarks/RESULTS.md``.

Runs ``torchsae.demo.run.run_demo`` (synthetic faceset -> small SAEHD -> swap A→B scored against the
held-out truth pairs, PSNR and SSIM inside the face mask) and appends one table: the trained model
next to the untrained one and to "no swap at all", with the budget, machine and wall times.

    python benchmarks/swap_quality.py [--steps 300] [--count 256] [--resolution 128] [--no-append]

A fixed budget (steps, batch, faceset size, seed) makes runs comparable across code changes; the
wall times depend on the machine and on whatever else it runs (the load average is recorded).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from results import append_results  # noqa: E402

from pipelines.bench import machine_description  # noqa: E402
from torchsae.demo.run import DEMO_BATCH, DEMO_MODEL, run_demo  # noqa: E402


def table(summary: dict, command: str, load: float) -> str:
    """The Markdown section for RESULTS.md."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dims = ", ".join(f"{k} {v}" for k, v in DEMO_MODEL.items())
    lines = [
        f"## Swap quality after {summary['steps']} steps (demo faceset, {when})",
        "",
        f"Machine: {machine_description()}, CPU only, {torch.get_num_threads()} torch threads, load average "
        f"{load:.1f} while measuring. "
        f"Command: `{command}`. Model: {dims}, {summary['resolution']} px, batch {DEMO_BATCH} per side, "
        f"lr {summary.get('lr', 'demo default')}; faceset {summary['count']} faces per side, seed "
        f"{summary['seed']}. Score: the swap A→B (DeepFaceLab's `pred_src_dst`) against the held-out truth "
        "renders of B, inside the mask where both renders are face; PSNR per pair averaged, SSIM (11-tap "
        "Gaussian, σ 1.5) averaged over masked positions.",
        "",
        "| model | PSNR (dB, masked) | SSIM (masked) |",
        "|---|---|---|",
    ]
    for label, score in summary["scores"].items():
        lines.append(f"| {label} | {score['psnr']:.2f} | {score['ssim']:.4f} |")
    lines += [
        "",
        f"Training took {summary['train_seconds']:.0f} s of {summary['total_seconds']:.0f} s in all "
        f"({summary['steps'] / max(summary['train_seconds'], 1e-9):.2f} steps/s); {summary['export']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--count", type=int, default=256, help="faces per side")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--no-append", action="store_true", help="print the table, do not write RESULTS.md")
    args = parser.parse_args()
    command = "python benchmarks/swap_quality.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="swap_quality_") as tmp:
        out = args.out or Path(tmp) / "run"
        summary = run_demo(
            out=out, count=args.count, steps=args.steps, seed=args.seed, resolution=args.resolution
        )
    section = table(summary, command.strip(), os.getloadavg()[0])
    print(section)
    if not args.no_append:
        append_results(section)


if __name__ == "__main__":
    main()
