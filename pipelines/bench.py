"""Measuring the data path per CPU core: decode ceiling, host cost, and the complete CPU path.

Why per core, and why CPU time: the figure that decides how many cores a GPU needs is samples per
core-second. Every stage runs on one core (``torch.set_num_threads(1)``, loader ``workers=0``, DALI
with one worker thread) and is divided by the *process CPU time* it used (``time.process_time``
counts every thread, so DALI's executor threads are charged too), not by wall time. Files are read
once beforehand so the page cache, not the disk, serves them: the disk is a property of the machine.

One sample = what one side of a training step needs: warped + target + full-face mask + eyes/mouth
mask. ``host`` stops at collated uint8 images + masks (on a GPU machine augmentation runs on the GPU);
``full`` adds the augmentation on the CPU, as ``Augmenter`` runs it there (OpenCV resampling,
``pipelines.cpu_sampler``); ``augment_ms_per_sample`` is the difference of the two, per core.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipelines.decode import decode_bgr

WARMUP_CALLS = 2


def run_timed(step: Callable[[], int], seconds: float, min_calls: int = 3) -> dict[str, float]:
    """Call ``step`` (returns samples done) until ``seconds`` of wall time; rates per CPU and wall second.

    The first WARMUP_CALLS calls are not timed (lazy imports, pipeline start, caches).
    """
    for _ in range(WARMUP_CALLS):
        step()
    samples, calls = 0, 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while calls < min_calls or time.perf_counter() - wall0 < seconds:
        samples += step()
        calls += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "samples": samples,
        "per_cpu_s": samples / max(cpu, 1e-9),
        "per_wall_s": samples / max(wall, 1e-9),
        "cpu_per_wall": cpu / max(wall, 1e-9),
    }


class _Cycle:
    """Endless round-robin over a list, one batch of items per call."""

    def __init__(self, items: list, batch_size: int) -> None:
        self.items, self.batch_size, self.position = items, batch_size, 0

    def take(self) -> list:
        out = [self.items[(self.position + k) % len(self.items)] for k in range(self.batch_size)]
        self.position = (self.position + self.batch_size) % len(self.items)
        return out


def decode_step(blobs: list[bytes], resolution: int, batch_size: int, full_scale: bool) -> Callable[[], int]:
    """libjpeg-turbo decode alone: DCT-scaled to R (torch backend) or at full size (DALI decodes full)."""
    import simplejpeg

    cycle = _Cycle(blobs, batch_size)

    def step() -> int:
        for data in cycle.take():
            if full_scale:
                simplejpeg.decode_jpeg(data, colorspace="BGR")
            else:
                decode_bgr(data, resolution)
        return batch_size

    return step


def host_step(index, backend: str, batch_size: int, seed: int = 0) -> tuple[Callable[[], dict], Any]:
    """One loader batch + its masks gathered from the index, on one core; returns (step, loader)."""
    from pipelines import make_loader

    loader = make_loader(
        backend, index, batch_size, seed=seed, device="cpu", workers=0 if backend == "torch" else 1
    )

    def step() -> dict:
        batch = next(loader)
        masks = torch.from_numpy(index.gather_masks(batch["indices"].numpy()))
        return {"images": batch["images"], "masks": masks}

    return step, loader


def measure(
    data_dir: str | Path,
    resolution: int,
    backend: str = "torch",
    seconds: float = 5.0,
    batch_size: int = 32,
    workers: int = 0,
    policy: str = "xseg",
    progress: bool = False,
) -> dict[str, Any]:
    """The figures of ``torchsae bench data`` (JSON-ready): the three per-core rates and context."""
    from pipelines.augment import Augmenter
    from pipelines.index import ensure_index
    from torchsae.config import DataConfig

    if backend not in ("torch", "dali"):
        from torchsae.errors import TorchSAEError

        raise TorchSAEError(f"bench data: backend {backend!r} must be torch or dali")
    import cv2

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        index = ensure_index(data_dir, resolution, policy, progress=progress)
        blobs = [Path(p).read_bytes() for p in index.paths]  # also warms the page cache
        decode = run_timed(decode_step(blobs, resolution, batch_size, full_scale=backend == "dali"), seconds)
        step, loader = host_step(index, backend, batch_size)
        host = run_timed(lambda: len(step()["images"]), seconds)
        augment = Augmenter(resolution, DataConfig(), seed=0)
        counter = iter(range(1 << 62))

        def full_step() -> int:
            batch = step()
            out = augment(batch["images"], batch["masks"], step=next(counter), rank=0, side="a")
            return out["warped"].shape[0]

        full = run_timed(full_step, seconds)
        loader.close()
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    result = {
        "backend": backend if backend == "torch" else "dali-cpu",
        "resolution": resolution,
        "files": len(index),
        "image_size": int(index.image_sizes.max()) if len(index) else 0,
        "batch_size": batch_size,
        "decode_ceiling_per_core": decode["per_cpu_s"],
        "host_samples_per_s_per_core": host["per_cpu_s"],
        "full_samples_per_s_per_core": full["per_cpu_s"],
        "host_fraction_of_ceiling": host["per_cpu_s"] / decode["per_cpu_s"],
        "augment_ms_per_sample": 1000.0 / full["per_cpu_s"] - 1000.0 / host["per_cpu_s"],
        "cpu_per_wall": {
            "decode": decode["cpu_per_wall"],
            "host": host["cpu_per_wall"],
            "full": full["cpu_per_wall"],
        },
        "machine": machine_description(),
    }
    if backend == "torch" and workers > 1:
        result["host_samples_per_s_machine"] = machine_host_rate(index, batch_size, workers, seconds)
        result["workers"] = workers
    return result


def machine_host_rate(index, batch_size: int, workers: int, seconds: float) -> float:
    """Wall-clock host rate of the DataLoader backend with ``workers`` processes (the whole machine)."""
    from pipelines.torch_loader import TorchLoader

    loader = TorchLoader(index.paths, index.resolution, batch_size, workers=workers)

    def step() -> int:
        batch = next(loader)
        index.gather_masks(batch["indices"].numpy())
        return batch_size

    rate = run_timed(step, seconds)["per_wall_s"]
    loader.close()
    return rate


def machine_description() -> str:
    """CPU model and core count, for the results table."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def format_result(result: dict[str, Any]) -> str:
    """Human-readable lines for the console."""
    lines = [
        f"backend {result['backend']}, R={result['resolution']}, {result['files']} files "
        f"({result['image_size']}px), batch {result['batch_size']} on {result['machine']}",
        f"  decode ceiling : {result['decode_ceiling_per_core']:9.1f} samples/s per core",
        f"  host path      : {result['host_samples_per_s_per_core']:9.1f} samples/s per core "
        f"({100 * result['host_fraction_of_ceiling']:.0f}% of the decode ceiling)",
        f"  full CPU path  : {result['full_samples_per_s_per_core']:9.1f} samples/s per core (augmentation included)",
    ]
    if "host_samples_per_s_machine" in result:
        lines.append(
            f"  host, {result['workers']} workers: {result['host_samples_per_s_machine']:9.1f} samples/s (wall clock)"
        )
    return "\n".join(lines)
