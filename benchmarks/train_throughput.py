"""Training-step throughput table: CPU rows always, GPU rows when a CUDA GPU is present.

Each row is ``torchsae bench train`` (``torchsae.train.bench.bench_train``): ms per optimiser step,
samples/s (A + B faces), FLOPs per step from ``torch.utils.flop_counter``, MFU against a matmul peak
measured in the same run, and peak memory. "synthetic" rows reuse one in-memory batch, so the data
path is excluded; "end-to-end" rows feed every step from the real pipeline on a demo faceset.

    python benchmarks/train_throughput.py [--steps 3] [--no-append]

The issue's H100 targets are checked when the GPU is an H100 and marked "not yet measured" otherwise:
df-ud 256 at DeepFaceLab's default dims, batch 16 per side, bf16: MFU ≥ 45 %; the end-to-end step
at most 5 % slower than the synthetic one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_results  # noqa: E402

from pipelines.bench import machine_description  # noqa: E402
from torchsae.config import ModelConfig  # noqa: E402
from torchsae.train.bench import bench_train  # noqa: E402

SMALL = {"ae_dims": 64, "e_dims": 16, "d_dims": 16, "d_mask_dims": 6}
# (model, batch per side, amp, compile, end-to-end)
CPU_ROWS: list[tuple[ModelConfig, int, str, bool, bool]] = [
    (ModelConfig(archi="df-ud", resolution=64, **SMALL), 4, "none", False, False),
    (ModelConfig(archi="df-ud", resolution=64, **SMALL), 4, "none", False, True),
    (ModelConfig(archi="df-ud", resolution=64, **SMALL), 4, "bf16", False, False),
    (ModelConfig(archi="liae-ud", resolution=64, **SMALL), 4, "none", False, False),
    (ModelConfig(archi="df-ud", resolution=128), 2, "none", False, False),
]
TARGET_MODEL = ModelConfig(archi="df-ud", resolution=256)  # DeepFaceLab's default dims
GPU_ROWS: list[tuple[ModelConfig, int, str, bool, bool]] = [
    (TARGET_MODEL, 16, "bf16", False, False),
    (TARGET_MODEL, 16, "bf16", True, False),
    (TARGET_MODEL, 16, "bf16", False, True),
    (TARGET_MODEL, 16, "none", False, False),
    (ModelConfig(archi="liae-ud", resolution=256), 16, "bf16", False, False),
    (ModelConfig(archi="df-ud", resolution=384), 8, "bf16", False, False),
]
MFU_TARGET, END_TO_END_SLOWDOWN = 0.45, 0.05


def run_rows(rows: list, device: str, steps: int, warmup: int, faceset: Path, workers: int) -> list[dict]:
    results = []
    for model, batch, amp, compile_, end_to_end in rows:
        result = bench_train(
            model,
            batch,
            steps,
            amp=amp,
            compile=compile_,
            device=device,
            warmup=warmup,
            data_dir=str(faceset) if end_to_end else None,
            backend="auto",
            workers=workers,
        )
        print(
            f"{result['device_name']} {model.archi} {model.resolution} b{batch} {amp} "
            f"{'compiled ' if compile_ else ''}{'e2e' if end_to_end else 'synthetic'}: "
            f"{result['ms_per_step']:.1f} ms/step, MFU {result['mfu']:.2%}",
            flush=True,
        )
        results.append(result)
    return results


def _row(r: dict[str, Any]) -> str:
    dims = f"{r['ae_dims']}/{r['e_dims']}/{r['d_dims']}/{r['d_mask_dims']}"
    data = "end-to-end" if r["data"].startswith("end-to-end") else "synthetic"
    compile_ = "yes" + (" (fell back to eager)" if r["compile_fallback"] else "") if r["compile"] else "no"
    return (
        f"| {r['device_name']} | {r['archi']} | {r['resolution']} | {dims} | {r['batch_size']} | {r['amp']} | "
        f"{compile_} | {data} | {r['ms_per_step']:.1f} | {r['samples_per_s']:.1f} | "
        f"{r['flops_per_step'] / 1e9:.1f} | {r['peak_flops'] / 1e12:.3f} ({r['peak_flops_dtype']}) | "
        f"{r['mfu']:.1%} | {r['peak_memory_bytes'] / 2**30:.2f} |"
    )


def target_lines(gpu_results: list[dict]) -> list[str]:
    """The H100 targets: checked against an H100's rows, else marked not yet measured."""
    on_h100 = [r for r in gpu_results if "H100" in r["device_name"]]

    def pick(amp: str, data: str, compiled: bool | None = None) -> list[dict]:
        return [
            r
            for r in on_h100
            if (r["archi"], r["resolution"], r["ae_dims"], r["batch_size"], r["amp"])
            == ("df-ud", 256, 256, 16, amp)
            and r["data"].startswith(data)
            and (compiled is None or r["compile"] == compiled)
        ]

    synthetic, end_to_end = pick("bfloat16", "synthetic"), pick("bfloat16", "end-to-end", False)
    if not synthetic:
        why = "no GPU in this session" if not gpu_results else f"GPU here: {gpu_results[0]['device_name']}"
        return [
            f"- H100, df-ud 256 default dims, batch 16 per side, bf16: MFU ≥ 45 %: **not yet measured** ({why}).",
            f"- H100, end-to-end step ≤ 5 % slower than synthetic: **not yet measured** ({why}).",
        ]
    best = max(synthetic, key=lambda r: r["mfu"])
    lines = [
        f"- H100 MFU (df-ud 256 default dims, batch 16, bf16): {best['mfu']:.1%} "
        f"({'met' if best['mfu'] >= MFU_TARGET else 'NOT met'}; target ≥ 45 %)."
    ]
    eager = [r for r in synthetic if not r["compile"]]
    if end_to_end and eager:
        slowdown = end_to_end[0]["ms_per_step"] / eager[0]["ms_per_step"] - 1
        verdict = "met" if slowdown <= END_TO_END_SLOWDOWN else "NOT met"
        lines.append(f"- H100 end-to-end vs synthetic: {slowdown:+.1%} ({verdict}; target ≤ +5 %).")
    return lines


def section(results: list[dict], gpu_results: list[dict], command: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        f"## Training-step throughput ({stamp})",
        "",
        f"Machine: {machine_description()}; GPU: {gpu}; load average {os.getloadavg()[0]:.1f} at the end "
        f"(shared machine). torch {torch.__version__}. Command: `{command}`.",
        "One step = forward of A and B, the SAEHD loss, backward and the AdaBelief update "
        "(`torchsae.train.step.g_step`). **synthetic** rows reuse one in-memory batch (the data path is "
        "excluded); **end-to-end** rows decode, gather masks and augment a 512² demo faceset every step. "
        "samples/s counts A and B faces. GFLOP/step: matmuls and convolutions of forward + backward "
        "(`torch.utils.flop_counter`); MFU = GFLOP/step ÷ step time ÷ the matmul peak measured in the same "
        "run. Peak memory: `max_memory_allocated` on a GPU; on the CPU the saved-tensor estimate.",
        "",
        "| device | archi | res | dims (ae/e/d/mask) | batch/side | amp | compile | data | ms/step | "
        "samples/s | GFLOP/step | matmul peak TFLOP/s | MFU | peak memory GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_row(r) for r in results + gpu_results],
        "",
        "Targets:",
        *target_lines(gpu_results),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument("--faces", type=int, default=32, help="Demo faces per side for end-to-end rows.")
    parser.add_argument("--workers", type=int, default=2, help="Loader workers for end-to-end rows.")
    parser.add_argument("--no-append", action="store_true", help="Print the section, leave RESULTS.md alone.")
    args = parser.parse_args(argv)
    command = "python benchmarks/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        from torchsae.demo import make_demo_faceset

        faceset = Path(tmp) / "faces"
        make_demo_faceset(faceset, args.faces, seed=0, truth_count=0)
        results = run_rows(CPU_ROWS, "cpu", args.steps, args.warmup, faceset, args.workers)
        gpu_results = []
        if torch.cuda.is_available():
            gpu_results = run_rows(
                GPU_ROWS, "cuda", args.gpu_steps, 5, faceset, args.workers or os.cpu_count()
            )
    text = section(results, gpu_results, command.strip())
    print(text)
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
    if not args.no_append:
        append_results(text)


if __name__ == "__main__":
    main()
