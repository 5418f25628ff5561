"""Console progress, TensorBoard and wandb for the training loop (rank 0 only).

Why the loop hands in plain floats at log intervals only: reading a CUDA loss with ``.item()`` waits
for the GPU. The loop keeps running sums on the device and converts them once per ``log_interval``;
between intervals the progress bar only counts steps, which costs no synchronisation.

Console progress (``train.progress``, ``--progress``): ``bar`` (tqdm), ``plain`` (one whole line per
log interval, for logs that are files: docker logs, nohup, SLURM), ``none``; ``auto`` picks the bar
when stderr is a terminal (see ``torchsae.train.report.resolve_progress``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from tqdm import tqdm

from torchsae.errors import ConfigError
from torchsae.train.report import plain_line, resolve_progress


def peak_rss_bytes() -> int:
    """The process's peak resident memory in bytes, on any platform.

    Windows: psutil's ``peak_wset`` (peak working set). POSIX: ``getrusage``'s ``ru_maxrss`` (kB on
    Linux, bytes on macOS); psutil has no peak there. Where neither exists, the current RSS.
    """
    info = psutil.Process().memory_info()
    peak = getattr(info, "peak_wset", None)
    if peak is not None:
        return int(peak)
    try:
        import resource  # POSIX only
    except ImportError:
        return int(info.rss)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: the allocator's peak on CUDA, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


class TrainLogger:
    """Progress bar + TensorBoard scalars/images + optional wandb, all no-ops on ranks other than 0."""

    def __init__(
        self,
        logs_dir: Path,
        *,
        enabled: bool,
        start_step: int,
        max_steps: int,
        samples_per_step: int,
        use_wandb: bool = False,
        config: dict[str, Any] | None = None,
        progress: str = "auto",
        elapsed_before: float = 0.0,
    ) -> None:
        self.enabled = enabled
        self.samples_per_step = samples_per_step
        self.max_steps = max_steps
        self.progress = resolve_progress(progress, sys.stderr)
        self._elapsed_before = float(elapsed_before)
        self._started = time.perf_counter()
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self._tb = None
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(logs_dir / "tensorboard"), purge_step=start_step + 1)
        if use_wandb:
            self._wandb = _start_wandb(logs_dir, config or {})
        if self.progress == "bar" and start_step < max_steps:  # no empty bar for a finished run
            self._bar = tqdm(
                total=max_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def step(self) -> None:
        """One finished step: advance the bar (no device synchronisation)."""
        if self._bar is not None:
            self._bar.update(1)

    def throughput(self, step: int) -> tuple[float, float]:
        """(steps/s, samples/s) since the previous call; resets the window."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps = max(step - self._last_step, 0)
        self._last_time, self._last_step = now, step
        return steps / elapsed, steps * self.samples_per_step / elapsed

    def elapsed_s(self) -> float:
        """Training seconds of the run: earlier sessions (from the checkpoint) plus this one."""
        return self._elapsed_before + time.perf_counter() - self._started

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write scalars to TensorBoard (and wandb) and show the headline ones on the bar, or as one
        plain line (``progress == "plain"``)."""
        if not self.enabled:
            return
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        postfix = {}
        for key, label in (("loss/a", "loss A"), ("loss/b", "loss B")):
            if key in values:
                postfix[label] = f"{values[key]:.4f}"
        if "perf/samples_per_s" in values:
            postfix["samples/s"] = f"{values['perf/samples_per_s']:.1f}"
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
        elif self.progress == "plain":
            line = plain_line(
                step,
                self.max_steps,
                values.get("perf/steps_per_s", 0.0),
                values.get("perf/samples_per_s", 0.0),
                values.get("loss/a"),
                values.get("loss/b"),
            )
            print(line, file=sys.stderr, flush=True)

    def image(self, step: int, tag: str, bgr: np.ndarray) -> None:
        """An HxWx3 uint8 BGR image to TensorBoard (as RGB) and wandb."""
        if not self.enabled:
            return
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        self._tb.add_image(tag, rgb, step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(rgb)}, step=step)

    def message(self, text: str) -> None:
        """A line that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._bar = self._tb = self._wandb = None


def _start_wandb(logs_dir: Path, config: dict[str, Any]) -> Any:
    """A wandb run stored under ``logs/wandb`` (``WANDB_MODE=offline`` works without an account)."""
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError(
            "--wandb: the wandb package is not installed (pip install 'torchsae[wandb]')"
        ) from exc
    (logs_dir / "wandb").mkdir(parents=True, exist_ok=True)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "torchsae"), dir=str(logs_dir), config=config)
