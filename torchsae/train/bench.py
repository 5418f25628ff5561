"""Training throughput: ms per optimiser step, samples/s, FLOPs, MFU and peak memory of the G step.

What is measured: :func:`torchsae.train.step.g_step` (forward, SAEHD loss, backward, optimiser update)
at the given architecture, batch and AMP mode, after warm-up steps (which also compile with
``--compile``). Two data modes:

* **synthetic** (default): one random batch held in device memory and reused, so the data path is
  excluded and the figure is the model's and optimiser's alone;
* **end-to-end**: the real pipeline (``pipelines.batch.make_train_batches``: decode, index masks,
  device augmentation) feeds every step, to show whether the data path keeps up.

FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one eager step
(forward and backward matmuls/convolutions; elementwise ops and the optimiser's update are not
counted, as is usual for MFU). The peak is measured in the same run with a large matmul in the dtype
the convolutions run in (bf16/fp16 under AMP, else fp32 — TF32 on Ampere+), so MFU compares the step
with what this device reaches on dense maths, not with a datasheet number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipelines.synthetic import synthetic_batch
from torchsae.config import Config, ModelConfig
from torchsae.train.dist import resolve_device
from torchsae.train.precision import resolve_amp
from torchsae.train.speed import enable_tf32, maybe_compile, use_channels_last
from torchsae.train.step import Batch, StepParts, build_parts, g_step

SYNTHETIC_NOTE = "synthetic: one in-memory batch reused every step (data path excluded)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, core count and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from pipelines.bench import machine_description

    return f"{machine_description()}, {torch.get_num_threads()} torch threads"


def matmul_peak_flops(
    device: torch.device, dtype: torch.dtype, size: int | None = None, seconds: float = 0.5
) -> float:
    """FLOP/s of a square ``size``² matmul in ``dtype`` on ``device``, best of three timed runs."""
    size = size or (8192 if device.type == "cuda" else 1024)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.mm(a, b)
    _sync(device)
    start = time.perf_counter()
    torch.mm(a, b)
    _sync(device)
    single = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(seconds / single))
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        _sync(device)
        best = max(best, 2.0 * size**3 * reps / (time.perf_counter() - start))
    return best


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls and convolutions ``fn()`` runs (backward included if it runs one)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def step_flops(parts: StepParts, batch: Batch) -> int:
    """FLOPs of one eager G step on ``batch`` (forward + backward); the step does update the weights."""
    forward, parts.forward = parts.forward, parts.model  # count the eager model, not compiled code
    try:
        return count_flops(lambda: g_step(parts, [batch]))
    finally:
        parts.forward = forward


def _data_source(
    cfg: Config, device: torch.device, data_dir: str | None
) -> tuple[Callable[[], Batch], str, Any]:
    """A ``next batch`` function, its description and the stream to close (None for synthetic)."""
    if data_dir is None:
        batch = synthetic_batch(cfg.train.batch_size, cfg.model.resolution, device)
        return (lambda: batch), SYNTHETIC_NOTE, None
    from pipelines.batch import make_train_batches

    root = Path(data_dir)
    a, b = (root / "A", root / "B") if (root / "A").is_dir() and (root / "B").is_dir() else (root, root)
    cfg = cfg.updated({"data": {"data_dir_a": str(a), "data_dir_b": str(b)}})
    stream = make_train_batches(cfg, rank=0, world_size=1, device=device, progress=False)
    note = f"end-to-end: {cfg.data.backend} backend, {cfg.data.workers} workers, A={a}, B={b}"
    return (lambda: next(stream)), note, stream


def bench_train(
    model: ModelConfig,
    batch_size: int,
    steps: int,
    amp: str = "none",
    compile: bool = False,
    device: str = "auto",
    warmup: int = 2,
    data_dir: str | None = None,
    backend: str = "auto",
    workers: int = 2,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Measure ``steps`` G steps after ``warmup`` ones; see the module docstring for each figure."""
    cfg = Config()
    cfg.model = model
    cfg.train.batch_size, cfg.train.amp = batch_size, amp
    cfg.data.backend, cfg.data.workers = backend, workers
    cfg.validate()
    dev = resolve_device(device)
    tf32 = enable_tf32(dev)
    amp_dtype, use_scaler = resolve_amp(amp, dev)
    torch.manual_seed(0)
    parts = build_parts(cfg, dev, amp_dtype=amp_dtype, use_scaler=use_scaler)
    nhwc = channels_last and use_channels_last(parts.model, dev)
    compiled = maybe_compile(parts.model, compile)
    parts.forward = compiled
    next_batch, data_note, stream = _data_source(cfg, dev, data_dir)
    try:
        flops = step_flops(parts, next_batch())
        for _ in range(warmup):
            g_step(parts, [next_batch()])
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        for _ in range(steps):
            g_step(parts, [next_batch()])
        _sync(dev)
        seconds = (time.perf_counter() - start) / steps
    finally:
        if stream is not None:
            stream.close()
    peak_dtype = amp_dtype or torch.float32
    peak = matmul_peak_flops(dev, peak_dtype)
    if dev.type == "cuda":
        peak_memory, memory_method = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    else:
        from torchsae.train.memory import estimate_step_memory

        peak_memory = estimate_step_memory(cfg, batch_size, "none", amp_dtype).peak
        memory_method = (
            "CPU estimate: saved tensors + weights, grads, optimiser state (torchsae.train.memory)"
        )
    return {
        "archi": model.archi,
        "resolution": model.resolution,
        "ae_dims": model.ae_dims,
        "e_dims": model.resolved_e_dims,
        "d_dims": model.resolved_d_dims,
        "d_mask_dims": model.resolved_d_mask_dims,
        "batch_size": batch_size,
        "samples_per_step": 2 * batch_size,
        "steps": steps,
        "warmup": warmup,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "none",
        "compile": compile,
        "compile_fallback": getattr(compiled, "failed", None),
        "channels_last": bool(nhwc),
        "tf32": tf32,
        "device": str(dev),
        "device_name": device_name(dev),
        "data": data_note,
        "ms_per_step": seconds * 1000.0,
        "samples_per_s": 2 * batch_size / seconds,
        "flops_per_step": flops,
        "peak_flops": peak,
        "peak_flops_dtype": str(peak_dtype).removeprefix("torch."),
        "mfu": flops / seconds / peak,
        "peak_memory_bytes": int(peak_memory),
        "peak_memory_method": memory_method,
        "torch": torch.__version__,
    }


def format_result(result: dict[str, Any]) -> str:
    """A few human-readable lines for the terminal."""
    return "\n".join(
        [
            f"{result['archi']} {result['resolution']}px (ae {result['ae_dims']}, e {result['e_dims']}, "
            f"d {result['d_dims']}, mask {result['d_mask_dims']}), batch {result['batch_size']} per side, "
            f"amp {result['amp']}{', compiled' if result['compile'] else ''} on {result['device_name']}",
            f"  data: {result['data']}",
            f"  {result['ms_per_step']:.1f} ms/step, {result['samples_per_s']:.1f} samples/s (A+B)",
            f"  {result['flops_per_step'] / 1e9:.1f} GFLOP/step; matmul peak "
            f"{result['peak_flops'] / 1e12:.2f} TFLOP/s ({result['peak_flops_dtype']}); MFU {result['mfu']:.1%}",
            f"  peak memory {result['peak_memory_bytes'] / 2**30:.2f} GiB ({result['peak_memory_method']})",
        ]
    )
