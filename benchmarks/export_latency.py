"""Inference latency of the exported swap graph: PyTorch eager vs ONNX Runtime (and GPU runtimes).

Measures batch 1 and 8 for PyTorch eager on the CPU and ONNX Runtime's CPU provider; where a CUDA GPU
is present also PyTorch eager on CUDA, ONNX Runtime's CUDA provider and TensorRT engines (fp32 and
fp16 graphs). Weights are random (latency does not depend on their values) unless ``--checkpoint``
is given. Every graph is exported and verified with ``torchsae.export.onnx.export_onnx`` first.
Targets (issue 6): ONNX Runtime CPU no slower than PyTorch eager; TensorRT fp16 ≥ 2× ORT CUDA fp32.

    python benchmarks/export_latency.py [--model-size 128] [--batches 1 8] [--iters 20] [--no-append]

Timing: host float32 arrays in and out for every runtime (what a caller pays), ``--warmup`` runs
first, then the median of ``--iters`` runs, the runtimes timed in turn within each iteration. PyTorch and ONNX Runtime use the same thread count
(all usable cores); ONNX Runtime runs with every graph optimisation and spinning threads.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from torchsae.config import ModelConfig, preset
from torchsae.export.onnx import export_onnx
from torchsae.export.session import cpu_cores, make_session
from torchsae.export.tensorrt import missing_requirements
from torchsae.models.registry import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, append_results  # noqa: E402


def interleaved_median_ms(fns: dict[str, Callable[[], object]], warmup: int, iters: int) -> dict[str, float]:
    """Median wall time (ms) of each callable, timing them in turn within every iteration.

    Interleaving makes every runtime see the same background load, so the comparison stays fair on
    a shared machine even when absolute times drift.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(values) for name, values in times.items()}


def machine() -> str:
    """CPU model, usable cores and GPU (if any), for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cpu_cores()} cores, {gpu}"


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, ModelConfig]:
    if args.checkpoint:
        from torchsae.export.source import load_model_for_export

        model, config, _ = load_model_for_export(args.checkpoint)
        return model, config.model
    cfg = preset(args.model_size)
    if args.archi:
        cfg.archi = args.archi
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[dict], ModelConfig]:
    model, cfg = load_model(args)
    res = cfg.resolution
    threads = args.threads or cpu_cores()
    torch.set_num_threads(threads)
    fp32_path = workdir / "sae_fp32.onnx"
    export_onnx(model, fp32_path, cfg, layout="torchsae", opset=args.opset)
    runtimes: dict[str, Callable[[np.ndarray], object]] = {}

    def torch_cpu(x: np.ndarray) -> object:
        with torch.inference_mode():
            return [t.numpy() for t in model.swap(torch.from_numpy(x))]

    runtimes["PyTorch eager CPU fp32"] = torch_cpu
    cpu_session = make_session(fp32_path, threads=threads, spin=True)
    runtimes["ONNX Runtime CPU fp32"] = lambda x: cpu_session.run(None, {"face": x})
    if torch.cuda.is_available():
        add_gpu_runtimes(runtimes, model, cfg, workdir, args)
    rows = []
    for batch in args.batches:
        x = np.random.default_rng(0).random((batch, 3, res, res), dtype=np.float32)
        calls = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in runtimes.items()}
        for name, ms in interleaved_median_ms(calls, args.warmup, args.iters).items():
            rows.append({"runtime": name, "batch": batch, "ms": ms, "faces_per_s": 1000.0 * batch / ms})
            print(
                f"{name:28s} batch {batch:2d}: {ms:9.2f} ms  ({1000.0 * batch / ms:8.1f} faces/s)", flush=True
            )
    return rows, cfg


def add_gpu_runtimes(
    runtimes: dict, model: torch.nn.Module, cfg: ModelConfig, workdir: Path, args: argparse.Namespace
) -> None:
    """PyTorch CUDA, ONNX Runtime CUDA EP and TensorRT engines, each where available."""
    cuda_model = build_model(cfg).cuda().eval()
    cuda_model.load_state_dict(model.state_dict())

    def torch_cuda(x: np.ndarray) -> object:
        with torch.inference_mode():
            out = cuda_model.swap(torch.from_numpy(x).cuda())
            return [t.cpu().numpy() for t in out]

    runtimes["PyTorch eager CUDA fp32"] = torch_cuda
    fp32_path = workdir / "sae_fp32.onnx"
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda_session = make_session(fp32_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        runtimes["ONNX Runtime CUDA fp32"] = lambda x: cuda_session.run(None, {"face": x})
    if missing_requirements() is None:
        from torchsae.export.tensorrt import EngineRunner, build_engine

        fp16_path = workdir / "sae_fp16.onnx"
        export_onnx(model, fp16_path, cfg, layout="torchsae", opset=args.opset, dtype="fp16")
        top = max(args.batches)
        for label, path in (("fp32", fp32_path), ("fp16", fp16_path)):
            engine = workdir / f"sae_{label}.engine"
            build_engine(path, engine, min_batch=1, opt_batch=top, max_batch=top)
            runner = EngineRunner(engine.read_bytes())
            runtimes[f"TensorRT {label} graph"] = lambda x, runner=runner: runner({"face": x})


def table(rows: list[dict], cfg: ModelConfig, command: str) -> str:
    """The Markdown section appended to RESULTS.md, with speed-ups against the reference runtime."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"## Export latency: {cfg.archi} {cfg.resolution}px (ae {cfg.ae_dims}, e {cfg.resolved_e_dims}, "
        f"d {cfg.resolved_d_dims}, mask {cfg.resolved_d_mask_dims})",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {machine()}; "
        f"{torch.get_num_threads()} CPU thread(s) per runtime; load average "
        f"at the end {load:.1f}. torch {torch.__version__}, onnxruntime {_ort_version()}. Command: `{command}`. "
        "Median wall time per call (runtimes interleaved), host float32 in and out.",
        "",
        "| runtime | batch | ms / call | faces / s | vs PyTorch eager CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    base = {r["batch"]: r["ms"] for r in rows if r["runtime"] == "PyTorch eager CPU fp32"}
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['ms']:.2f} | {r['faces_per_s']:.1f} | {base[r['batch']] / r['ms']:.2f}× |"
        )
    verdicts = []
    for batch in sorted(base):
        ort_ms = next(
            r["ms"] for r in rows if r["runtime"] == "ONNX Runtime CPU fp32" and r["batch"] == batch
        )
        ok = "met" if ort_ms <= base[batch] else "NOT met"
        verdicts.append(f"batch {batch}: ORT CPU {base[batch] / ort_ms:.2f}× PyTorch eager ({ok})")
    lines += ["", "Target ONNX Runtime CPU no slower than PyTorch eager: " + "; ".join(verdicts) + "."]
    trt = {r["batch"]: r["ms"] for r in rows if r["runtime"] == "TensorRT fp16 graph"}
    ort_cuda = {r["batch"]: r["ms"] for r in rows if r["runtime"] == "ONNX Runtime CUDA fp32"}
    if trt and ort_cuda:
        lines.append(
            "Target TensorRT fp16 ≥ 2× ORT CUDA fp32: "
            + "; ".join(f"batch {b}: {ort_cuda[b] / trt[b]:.2f}×" for b in sorted(trt) if b in ort_cuda)
            + "."
        )
    else:
        lines.append(
            "GPU rows (PyTorch CUDA, ORT CUDA EP, TensorRT) not measured: no CUDA GPU / TensorRT here."
        )
    return "\n".join(lines) + "\n"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", type=int, default=128, help="preset resolution (128, 256, 384)")
    parser.add_argument("--archi", default=None, help="override the preset's archi (e.g. df-ud)")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="measure this checkpoint's model instead"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for both runtimes (default: all cores)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-append", action="store_true", help="print the table, do not touch RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="torchsae-latency-") as tmp:
        rows, cfg = measure(args, Path(tmp))
    command = "python benchmarks/export_latency.py " + " ".join(sys.argv[1:])
    section = table(rows, cfg, command.strip())
    print()
    print(section)
    if not args.no_append:
        append_results(section)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
