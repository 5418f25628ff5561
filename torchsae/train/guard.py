"""Divergence guard: which steps count as bad, when a checkpoint may be written, what to restore.

Why this exists: a step whose update explodes the weights is itself finite. Its loss was computed
from the good weights before the update, so neither the finite check nor ``non_finite_tensors`` sees
anything, and a save scheduled right after it would write the diverged weights to ``last.pth`` and
retain them as a copy, pruning an older good one. So:

* A scheduled save is *deferred by one step*: its state (step, every rank's RNG and data position, the
  metrics) is captured when it falls due, and the file is written during the next step that the
  guard judges good, after that step's forward/backward and before its update. The weights written
  are therefore exactly the ones that just produced a finite, ordinary loss. The final save and the
  save on a stop signal are written at once (there is no next step), unless a bad streak is running.
* A step is bad when its loss or gradient norm is not finite, or (the spike guard) when its loss is
  more than ``spike_factor`` times the median of the recent good losses. Bad steps are skipped (no
  update). During a bad streak nothing is saved, retained or pruned.
* After ``limit`` bad steps in a row the weights and optimiser states are restored from the newest
  checkpoint written *before the streak began* (a checkpoint at the streak's first step holds the
  weights that produced the first bad loss), looking only at this run's own files and the one it
  resumed from.

The loss value reaches the host in the step's one synchronisation (the finite check), so the spike
guard costs no extra device round trip.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchsae.train.dist import DistInfo

SPIKE_WINDOW = 50  # good losses the running level is the median of
SPIKE_WARMUP = 10  # good losses needed before the spike guard arms


@dataclass
class StepFlags:
    """The step's decisions, identical on every rank."""

    non_finite: bool
    stop: bool
    backup_due: bool
    loss: float  # the largest per-rank loss (inf when not finite anywhere)


def sync_step_flags(
    info: DistInfo, non_finite: torch.Tensor, stop: bool, backup_due: bool, loss: torch.Tensor
) -> StepFlags:
    """One small tensor, reduced with MAX over ranks and read once: the step's only host sync."""
    device = loss.device
    host_flags = torch.tensor([float(stop), float(backup_due)]).to(device, non_blocking=True)
    values = torch.cat(
        [
            non_finite.to(device=device, dtype=torch.float32).reshape(1),
            host_flags,
            torch.nan_to_num(loss.detach().float(), nan=float("inf")).reshape(1),
        ]
    )
    if info.distributed:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    bad, stop_v, backup_v, loss_v = values.tolist()
    return StepFlags(bad > 0, stop_v > 0, backup_v > 0, loss_v)


class DivergenceGuard:
    """Judges each step; tracks the bad streak and the running loss level."""

    def __init__(self, spike_factor: float, limit: int, recent: list[float] | None = None) -> None:
        self.spike_factor = spike_factor
        self.limit = limit
        # the recent good per-sample losses, carried in the checkpoint's metrics so that the guard is
        # armed from the first step after a resume (a run restarted with a huge --lr explodes at once)
        self.recent: deque[float] = deque((float(v) for v in recent or []), maxlen=SPIKE_WINDOW)
        self.streak = 0
        self.streak_start: int | None = None
        self.spikes = 0
        self.good_run = 0  # good steps in a row (0 right after a restore: nothing new to save yet)

    def level(self) -> float | None:
        """The running loss level (median of the recent good losses), once armed."""
        if self.spike_factor <= 0 or len(self.recent) < SPIKE_WARMUP:
            return None
        return statistics.median(self.recent)

    def judge(self, step: int, flags: StepFlags) -> str:
        """``'ok'``, ``'non-finite'`` or ``'spike'`` for the step about to update (at ``step``)."""
        level = self.level()
        if flags.non_finite or not _finite(flags.loss):
            verdict = "non-finite"
        elif level is not None and flags.loss > self.spike_factor * level:
            verdict = "spike"
            self.spikes += 1
        else:
            self.recent.append(flags.loss)
            self.streak, self.streak_start = 0, None
            self.good_run += 1
            return "ok"
        if self.streak == 0:
            self.streak_start = step
        self.streak += 1
        self.good_run = 0
        return verdict

    def level_state(self) -> list[float]:
        """The recent good losses, for the checkpoint's metrics."""
        return list(self.recent)

    @property
    def in_streak(self) -> bool:
        return self.streak > 0

    @property
    def exhausted(self) -> bool:
        return self.streak >= self.limit

    @property
    def may_save(self) -> bool:
        """The weights are new and came from a good step (no streak, not just restored)."""
        return self.streak == 0 and self.good_run > 0

    @property
    def recovered(self) -> bool:
        """Enough good steps in a row that a restore counts as having worked."""
        return self.good_run >= 2 * self.limit

    def reset_streak(self) -> None:
        """After a restore: the streak is over, and the restored weights are not new."""
        self.streak, self.streak_start, self.good_run = 0, None, 0


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


@dataclass
class PendingSave:
    """A save that fell due at ``step``: written at the next good step (see the module docstring)."""

    step: int
    gathered: dict[int, Any] | None  # {rank: {"rng", "data"}} on rank 0
    metrics: dict[str, Any]
    snapshot: bool


@dataclass
class Lineage:
    """The checkpoints this run may restore: the files it wrote (path -> step) and the one it resumed."""

    written: dict[Path, int] = field(default_factory=dict)
    resumed: tuple[Path, int] | None = None

    def record(self, path: Path, step: int) -> None:
        self.written[path] = step

    def candidates_before(self, step: int) -> list[tuple[int, Path]]:
        """Existing files of this lineage holding a step before ``step``, newest first."""
        found = [(s, p) for p, s in self.written.items() if s < step and p.is_file()]
        if self.resumed is not None and self.resumed[1] < step and self.resumed[0].is_file():
            if self.resumed[0] not in self.written:  # last.pth may have been rewritten since
                found.append((self.resumed[1], self.resumed[0]))
        return sorted(found, key=lambda item: item[0], reverse=True)


class Failsafe:
    """What the trainer does when an exception ends its loop: save first, then one line.

    The trainer arms it once the loop's state exists, with a callback that writes the last whole,
    finite step (returning a phrase saying what holds the work) and a cleanup (stop the data workers).
    ``train`` turns any exception into :class:`~torchsae.train.trainer.TrainingFailed` through
    :meth:`failed`; before arming (set-up) exceptions pass unchanged.
    """

    def __init__(self) -> None:
        self._save: Any = None
        self._cleanup: Any = None

    def arm(self, save: Any, cleanup: Any) -> None:
        self._save, self._cleanup = save, cleanup

    def disarm(self) -> None:
        self._save = self._cleanup = None

    def failed(self, exc: BaseException) -> BaseException:
        """The exception to raise in place of ``exc``."""
        from torchsae.errors import TorchSAEError
        from torchsae.train.trainer import DivergedError, TrainingFailed

        save, cleanup = self._save, self._cleanup
        self.disarm()
        if save is None or isinstance(exc, DivergedError):
            return exc
        try:
            where = save()
        except Exception as save_exc:  # the save itself failed (full disk, vanished folder)
            where = f"the failure-time save failed too ({_one_line(save_exc)})"
        if cleanup is not None:
            try:
                cleanup()
            except Exception:  # noqa: S110 - best effort: the process is ending anyway
                pass
        if isinstance(exc, TorchSAEError):
            return TrainingFailed(f"{_message(exc)}; {where}")
        return TrainingFailed(f"training stopped by {_one_line(exc)}; {where}")


def _message(exc: BaseException) -> str:
    """The one line that says what went wrong. An error re-raised from a DataLoader worker carries the
    worker's whole traceback in its message; its last line is the original ``Type: message``."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) > 1 and any(line.startswith("Original Traceback") for line in lines):
        last = lines[-1]
        name, sep, rest = last.partition(": ")
        return rest if sep and name.rsplit(".", 1)[-1] == type(exc).__name__ else last
    return lines[0]


def _one_line(exc: BaseException) -> str:
    first = _message(exc)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
