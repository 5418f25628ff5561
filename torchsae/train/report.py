"""What a run tells its user in plain text: the start summary, one plain log line per log interval,
and how it ended (target reached, where the outputs are, steps and time).

Why a module of its own: headless runs (docker logs, nohup, SLURM) have no terminal for a progress
bar, so everything a DeepFaceLab user reads off the console must also exist as whole lines; and the
trainer stays a loop with a few hook lines. Rank 0 prints; the other ranks build nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from torchsae.config import PROGRESS_MODES, Config, ModelConfig, preset
from torchsae.train.checkpoint import TrainingCheckpoint

__all__ = ["PROGRESS_MODES", "RunReport", "plain_line", "resolve_progress"]
NO_PROGRESS_ENV = "TORCHSAE_NO_PROGRESS"  # "1": no progress bar (plain lines instead), as before


def resolve_progress(mode: str, stream: IO[str] | None = None) -> str:
    """``bar``, ``plain`` or ``none`` for ``train.progress``.

    ``auto``: the bar when ``stream`` (stderr) is a terminal, else plain lines; ``TORCHSAE_NO_PROGRESS=1``
    turns the bar off under ``auto`` (plain lines then, so the losses are still printed).
    """
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    if os.environ.get(NO_PROGRESS_ENV) == "1":
        return "plain"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "plain"


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``Nd H:MM:SS`` past a day); ``-`` when unknown."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def plain_line(
    step: int,
    max_steps: int,
    steps_per_s: float,
    samples_per_s: float,
    loss_a: float | None,
    loss_b: float | None,
    now: float | None = None,
) -> str:
    """One DeepFaceLab-like log line: ``[time][#step][ms/step] samples/s, loss A, loss B, ETA``.

    ``[2026-11-30 14:02:03][#000120/200000][ 245ms][  65.3 samples/s] loss A 0.2345 loss B 0.3456 ETA 13:35:10``
    """
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if now is None else now))
    ms = f"{1000.0 / steps_per_s:5.0f}ms" if steps_per_s > 0 else "    -ms"
    eta = format_duration((max_steps - step) / steps_per_s) if steps_per_s > 0 else "-"
    loss_a_text = f"{loss_a:.4f}" if loss_a is not None else "-"
    loss_b_text = f"{loss_b:.4f}" if loss_b is not None else "-"
    return (
        f"[{stamp}][#{step:06d}/{max_steps}][{ms}][{samples_per_s:6.1f} samples/s] "
        f"loss A {loss_a_text} loss B {loss_b_text} ETA {eta}"
    )


def model_size_note(model_size: int | None, model: ModelConfig) -> str | None:
    """What ``--model-size N`` built when other options changed the preset (None when they did not)."""
    if model_size is None:
        return None
    base = preset(model_size)
    changed = [
        f"{name} {getattr(model, name)}"
        for name in ("resolution", "archi", "ae_dims", "e_dims", "d_dims", "d_mask_dims")
        if getattr(model, name) != getattr(base, name)
    ]
    if not changed:
        return None
    return (
        f"--model-size {model_size} with {', '.join(changed)}: built {model.archi} at {model.resolution} px, "
        f"ae {model.ae_dims}, e {model.resolved_e_dims}, d {model.resolved_d_dims}, "
        f"d_mask {model.resolved_d_mask_dims} (the {model_size} preset's dims where not overridden)"
    )


def stream_restart_note(resume: Path, state: TrainingCheckpoint, rank: int) -> str:
    """Why a resumed run's data stream and RNGs start afresh: a fresh DeepFaceLab import, another
    world size, or a checkpoint without them."""
    saved_ranks = sorted((state.rng or {}).keys())
    imported = state.imported_from or {}
    if imported and not saved_ranks and not state.data:
        source = imported.get("folder") or "a DeepFaceLab model folder"
        return (
            f"{resume}: fresh import from DeepFaceLab ({source}): there is no data position or RNG "
            "state to restore yet, so the data stream starts from the beginning (normal for a first resume)"
        )
    if saved_ranks:
        return (
            f"{resume}: saved by {len(saved_ranks)} rank(s), none with this rank {rank}'s RNG/data state "
            "(world size changed?); the stream restarts"
        )
    return f"{resume}: the checkpoint holds no RNG/data state; the stream restarts"


def _count(n: int) -> str:
    return f"{n:,}"


class RunReport:
    """The start summary and the closing summary of one training session (rank 0 prints)."""

    def __init__(self, cfg: Config, enabled: bool, out: IO[str] | None = None) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.out = out
        self.started = time.monotonic()
        self.start_step = 0
        self.run_dir = Path(cfg.train.run_dir)

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.out if self.out is not None else sys.stdout, flush=True)

    def start_summary(
        self,
        *,
        model: Any,
        discriminators: dict[str, Any],
        world_size: int,
        device: Any,
        plan: Any,
        amp_dtype: Any,
        data: Any,
        step: int,
        resume: Path | None,
        notes: Sequence[str] = (),
    ) -> str:
        """The multi-line summary printed once before the first step; ``notes``: the task's own lines
        (``label  text``, e.g. the parts a hybrid run initialised from a module bank)."""
        cfg = self.cfg
        m, t, o = cfg.model, cfg.train, cfg.optim
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lines = [f"Training SAEHD {m.archi} {m.resolution} px in {self.run_dir.resolve()}"]
        model_line = (
            f"SAEHD {m.archi} ({m.archi_type.upper()}), {_count(params)} parameters "
            f"({params * 4 / 2**20:.1f} MiB fp32"
            + (f", {_count(trainable)} trainable" if trainable != params else "")
            + f"); {m.resolution} px, face type {m.face_type}; ae {m.ae_dims}, e {m.resolved_e_dims}, "
            f"d {m.resolved_d_dims}, d_mask {m.resolved_d_mask_dims}"
        )
        lines.append(f"  model        {model_line}")
        lines.extend(f"  {note}" for note in notes)
        for name, disc in discriminators.items():
            count = sum(p.numel() for p in disc.parameters())
            lines.append(f"  {name + ' D':<12} {_count(count)} parameters")
        lines.append(
            f"  optimizer    {o.optimizer}, lr {o.lr:g}, lr dropout {'on' if o.lr_dropout else 'off'}, "
            f"clipgrad {'on' if o.clipgrad else 'off'}"
        )
        amp = "off (fp32)" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")
        lines.append(f"  precision    amp {t.amp}: {amp}")
        if plan is not None:
            lines.append(f"  memory       {plan.describe().removeprefix('Memory plan: ')}")
        else:
            lines.append("  memory       no plan (give --memory-budget to fit the step in a budget)")
        if plan is not None:
            effective, micro, accum = plan.batch_size, plan.micro_batch, plan.grad_accum
        else:
            effective, micro, accum = t.batch_size * t.grad_accum, t.batch_size, t.grad_accum
        lines.append(
            f"  ranks        {device} x{world_size}: batch {effective} per rank per side"
            + (f" ({accum} micro-batches of {micro})" if accum > 1 else "")
            + f", global batch {effective * world_size} per side"
        )
        drawn = {side.name for side in getattr(data, "sides", None) or ()}
        for side, label in (("a", "A (dst)"), ("b", "B (src)")):
            if not drawn or side in drawn:  # a one-sided task (torchsae.modular) draws A only
                lines.append(f"  data {label:<8}{_side_line(data, side)}")
        begin = f"resumed from {resume} at step {step}" if resume is not None else "fresh, from step 0"
        lines.append(f"  steps        {begin}; target {t.max_steps}")
        lines.append(
            f"  every        log {t.log_interval}, preview {t.preview_interval}, save {t.save_interval} "
            f"steps; keep {t.keep} copies"
        )
        return "\n".join(lines)

    def start(self, **kwargs: Any) -> None:
        """Print the start summary (see ``start_summary``) and remember where the session began."""
        self.start_step = int(kwargs["step"])
        if self.enabled:
            self._print(self.start_summary(**kwargs))

    def closing_summary(self, step: int, stopped: bool, checkpoint: Path | None) -> str:
        """Target reached or stopped, steps done in this session and time, and where everything is."""
        cfg = self.cfg
        elapsed = time.monotonic() - self.started
        done = step - self.start_step
        lines = []
        if stopped:
            lines.append(f"Stopped at step {step} of {cfg.train.max_steps}; run the same command to go on.")
        elif step >= cfg.train.max_steps:
            if done == 0:
                lines.append(
                    f"Target step {cfg.train.max_steps} reached: the checkpoint is already at step {step}, "
                    "nothing to train; raise --max-steps to train further."
                )
            else:
                lines.append(f"Target step {cfg.train.max_steps} reached.")
        per_step = f" ({elapsed / done * 1000:.0f} ms/step with set-up)" if done > 0 else ""
        lines.append(
            f"  steps        {done} this session ({self.start_step} -> {step}) in {format_duration(elapsed)}{per_step}"
        )
        models, logs = self.run_dir / "models", self.run_dir / "logs"
        last = checkpoint if checkpoint is not None and checkpoint.name == "last.pth" else models / "last.pth"
        lines.append(f"  checkpoint   {last}" + ("" if last.is_file() else " (not written)"))
        lines.append(f"  previews     {logs / 'previews'}")
        lines.append(f"  loss curve   {logs / 'loss.png'}")
        lines.append(f"  tensorboard  tensorboard --logdir {logs / 'tensorboard'}")
        lines.append(f"  inspect      torchsae info checkpoint {self.run_dir}")
        return "\n".join(lines)

    def finish(self, step: int, stopped: bool, checkpoint: Path | None) -> None:
        if self.enabled:
            self._print(self.closing_summary(step, stopped, checkpoint))


def _side_line(data: Any, side: str) -> str:
    """``FOLDER: N usable, M skipped (list: skipped.json)`` from the stream's side index."""
    indexes = getattr(data, "indexes", None)
    if not indexes or side not in indexes:
        return "synthetic batches (no faceset)"
    index = indexes[side]
    skipped = len(index.skipped)
    line = f"{index.root}: {len(index)} usable, {skipped} skipped"
    if skipped:
        line += f" (list: {index.directory / 'skipped.json'})"
    return line + f"; index {index.directory.parent}"
