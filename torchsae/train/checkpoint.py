"""Checkpoints: one self-contained file per save, written atomically and loaded weights-only.

Why this shape:

* ``torch.load(weights_only=True)`` refuses arbitrary pickles, so a checkpoint downloaded from
  somewhere cannot run code. The price is that everything inside must be tensors or plain containers
  of primitives: RNG states become tensors/lists, the config is ``Config.to_dict()``.
* A checkpoint only counts once it is complete: it is written to a temporary name, fsynced and renamed
  (``torchsae.fileio.atomic_open``), so ``kill -9`` at any moment leaves the previous ``last.pth``
  loadable.
* A checkpoint with non-finite weights is refused at save time: resuming from it could never recover.
* One schema, :class:`TrainingCheckpoint`, with one writer (:func:`write_checkpoint`, which validates)
  and one reader (:func:`read_checkpoint`, which migrates older format versions); ``load_checkpoint``
  is the reader's result as the on-disk dict.

Layout inside the run folder: ``models/last.pth`` (always the newest) plus retained copies
``models/step_XXXXXXXX.pth`` (the ``keep`` most recently written; hard links of ``last.pth`` where the
file system allows, so retention costs no extra write) and snapshots kept forever,
``models/snapshots/step_XXXXXXXX.pth`` (``--snapshot-every``, ``--autobackup-hours``).

Pruning goes by the time a copy was written, not by its step number: after resuming from an older copy
the copies of the abandoned timeline carry higher step numbers, and sorting by step would delete the
new timeline's copies, the file resumed from first. The file resumed from is never pruned.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_open, replace

FORMAT = "torchsae-checkpoint"
VERSION = 2  # 2: the ``task`` entry (which training task wrote the file); 1 files are migrated on load
READABLE_VERSIONS = (1, 2)
DEFAULT_TASK = "saehd"
LAST_NAME = "last.pth"
SNAPSHOT_DIR = "snapshots"
REQUIRED_KEYS = ("format", "version", "step", "config", "model")
_STEP_RE = re.compile(r"^step_(\d{8,})\.pth$")


class CheckpointError(TorchSAEError):
    """A checkpoint file is missing, truncated, of another format, or would hold non-finite weights."""


def step_name(step: int) -> str:
    """The retained copy's file name for ``step`` (zero-padded so names sort by step)."""
    return f"step_{step:08d}.pth"


def non_finite_tensors(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of floating-point tensors in ``state_dict`` holding NaN or Inf (checked on their device)."""
    bad = []
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                bad.append(name)
    return bad


@dataclass
class TrainingCheckpoint:
    """The one schema of a checkpoint file: plain containers of tensors and primitives inside, so that
    ``torch.load(weights_only=True)`` loads it. ``to_dict`` is the on-disk layout (optional entries that
    are None are left out, as the files of version 1 did); ``from_dict`` migrates older versions."""

    step: int
    config: dict[str, Any]  # Config.to_dict() as the user configured the run
    model: dict[str, torch.Tensor]
    optimizers: dict[str, Any] | None = None  # {name: optimizer state_dict}
    discriminators: dict[str, dict[str, torch.Tensor]] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[int, Any] | None = None  # {rank: capture_rng_state()}
    data: dict[int, Any] | None = None  # {rank: the data stream's state_dict()}
    metrics: dict[str, Any] | None = None  # skipped_steps, history, elapsed_s, loss_level
    imported_from: dict[str, Any] | None = None  # a DeepFaceLab import's origin (export-dfl reads it)
    task: str = DEFAULT_TASK  # the training task that wrote it (version 2)
    source_version: int = field(default=VERSION, compare=False)  # the version the file was read as

    _OPTIONAL = ("optimizers", "discriminators", "scaler", "rng", "data", "metrics", "imported_from")

    def to_dict(self) -> dict[str, Any]:
        """The on-disk layout (what ``load_checkpoint`` returns)."""
        state: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "step": self.step,
            "config": self.config,
            "model": self.model,
        }
        for key in self._OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                state[key] = value
        return state

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], source: str | Path = "checkpoint") -> TrainingCheckpoint:
        """Check and migrate a loaded (or hand-built) state; errors name ``source``. Without
        ``format``/``version`` the state is taken as the current version (a state being built)."""
        if not isinstance(state, Mapping) or state.get("format", FORMAT) != FORMAT:
            raise CheckpointError(f"{source}: not a TorchSAE checkpoint (format key missing or different)")
        version = state.get("version", VERSION)
        if version not in READABLE_VERSIONS:
            raise CheckpointError(
                f"{source}: checkpoint version {version!r}, this TorchSAE reads "
                + ", ".join(str(v) for v in READABLE_VERSIONS)
            )
        state = _MIGRATIONS[version](dict(state))
        missing = [key for key in ("step", "config", "model") if key not in state]
        if missing:
            raise CheckpointError(f"{source}: checkpoint lacks {', '.join(missing)}")
        unknown = sorted(set(state) - _KNOWN_KEYS)
        if unknown:
            raise CheckpointError(f"{source}: checkpoint has unknown entries {', '.join(map(str, unknown))}")
        if not isinstance(state["model"], Mapping) or not isinstance(state["config"], Mapping):
            raise CheckpointError(f"{source}: checkpoint's model or config is not a mapping")
        fields = {key: state.get(key) for key in ("step", "config", "model", *cls._OPTIONAL)}
        return cls(**fields, task=state.get("task", DEFAULT_TASK), source_version=version)

    def validate(self, source: str | Path) -> None:
        """What the writer refuses: a step that is not a whole number, non-finite weights."""
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise CheckpointError(f"{source}: refusing to save a checkpoint at step {self.step!r}")
        weights = {f"model.{k}": v for k, v in self.model.items()}
        for name, disc in (self.discriminators or {}).items():
            weights.update({f"discriminators.{name}.{k}": v for k, v in disc.items()})
        bad = non_finite_tensors(weights)
        if bad:
            shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
            raise CheckpointError(f"{source}: refusing to save non-finite weights ({shown})")


def _from_v1(state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (trainer saves and DeepFaceLab imports before the task entry): all were SAEHD."""
    state.setdefault("task", DEFAULT_TASK)
    state["version"] = VERSION
    return state


_MIGRATIONS = {1: _from_v1, 2: lambda state: state}
_KNOWN_KEYS = {"format", "version", "task", "step", "config", "model", *TrainingCheckpoint._OPTIONAL}


def _coerce(state: TrainingCheckpoint | Mapping[str, Any], source: str | Path) -> TrainingCheckpoint:
    if isinstance(state, TrainingCheckpoint):
        return state
    missing = [key for key in ("step", "config", "model") if key not in state]
    if missing:
        raise CheckpointError(f"{source}: refusing to save a checkpoint without {', '.join(missing)}")
    return TrainingCheckpoint.from_dict(state, source)


def write_checkpoint(path: str | Path, checkpoint: TrainingCheckpoint | Mapping[str, Any]) -> None:
    """The one writer: validate, then write ``path`` atomically (a dict goes through ``from_dict``).

    Tensors may live on any device; torch.save records them and ``read_checkpoint`` maps them to the
    CPU. Non-finite model or discriminator weights are refused.
    """
    path = Path(path)
    checkpoint = _coerce(checkpoint, path)
    checkpoint.validate(path)
    with atomic_open(path, "wb") as handle:
        torch.save(checkpoint.to_dict(), handle)


save_checkpoint = write_checkpoint  # the name callers and tests have always used


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> TrainingCheckpoint:
    """The one reader: load onto the CPU with ``weights_only=True``, check and migrate; errors name the
    file. ``mmap=True`` maps the tensors instead of reading them: for callers that need only the config
    or the step (resolving a run's config before training loads the weights for real).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; move it away to resume")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive; anything else would fail obscurely
        what = "an empty file" if not magic else "not a zip archive"
        raise CheckpointError(
            f"{path}: not a loadable TorchSAE checkpoint ({what}: another file, or a write cut short)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable TorchSAE checkpoint ({first})") from exc
    if not isinstance(state, dict) or "format" not in state or "version" not in state:
        raise CheckpointError(f"{path}: not a TorchSAE checkpoint (format key missing or different)")
    return TrainingCheckpoint.from_dict(state, path)


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """``read_checkpoint(path).to_dict()``: the file's entries by key, migrated to the current version."""
    return read_checkpoint(path, mmap=mmap).to_dict()


def retained_checkpoints(models_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the numbered copies in ``models_dir``, oldest first."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    found = []
    for entry in models_dir.iterdir():
        match = _STEP_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def snapshots(models_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the snapshots in ``models_dir/snapshots``, oldest first."""
    return retained_checkpoints(Path(models_dir) / SNAPSHOT_DIR)


def stored_step(path: str | Path) -> int | None:
    """The step a checkpoint file holds (memory-mapped read), or None when it cannot be read."""
    try:
        return int(read_checkpoint(path, mmap=True).step)
    except (CheckpointError, TypeError, ValueError):
        return None


def list_checkpoints(models_dir: str | Path) -> list[tuple[str, int, Path]]:
    """Every checkpoint of a run as ``(kind, step, path)``, kind ``last``, ``copy`` or ``snapshot``.

    Sorted by step (``last`` after the copies of its step). The step of ``last.pth`` is read from the
    file (memory-mapped); an unreadable ``last.pth`` is listed with step -1.
    """
    models_dir = Path(models_dir)
    found: list[tuple[str, int, Path]] = [("copy", s, p) for s, p in retained_checkpoints(models_dir)]
    found += [("snapshot", s, p) for s, p in snapshots(models_dir)]
    last = models_dir / LAST_NAME
    if last.is_file():
        last_step = stored_step(last)
        found.append(("last", -1 if last_step is None else last_step, last))
    order = {"snapshot": 0, "copy": 1, "last": 2}
    return sorted(found, key=lambda item: (item[1], order[item[0]]))


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def save_training_checkpoint(
    models_dir: str | Path,
    state: TrainingCheckpoint | Mapping[str, Any],
    keep: int,
    *,
    snapshot: bool = False,
    protect: Path | None = None,
) -> Path:
    """Write ``models_dir/last.pth``, retain a numbered copy and prune to the ``keep`` newest copies.

    ``keep == 0`` keeps only ``last.pth``. ``snapshot`` also links it into ``snapshots/`` (never
    pruned). Copies are pruned by the time they were written (see the module docstring), and
    ``protect`` (the file the run resumed from) never is. Returns the path of ``last.pth``. Any
    ``OSError`` (disk full, read-only folder) becomes a one-line CheckpointError naming the file; a
    failure while writing ``last.pth`` leaves the previous one intact.
    """
    models_dir = Path(models_dir)
    last = models_dir / LAST_NAME
    state = _coerce(state, last)
    step = int(state.step)
    try:
        write_checkpoint(last, state)
    except OSError as exc:
        raise CheckpointError(f"{last}: {_os_reason(exc)}; the previous checkpoint is kept") from exc
    targets = []
    if keep > 0:
        targets.append(models_dir / step_name(step))
    if snapshot:
        targets.append(models_dir / SNAPSHOT_DIR / step_name(step))
    for target in targets:
        try:
            target.parent.mkdir(exist_ok=True)
            _retain_copy(last, target)
        except OSError as exc:
            raise CheckpointError(f"{target}: {_os_reason(exc)}; {last} holds step {step}") from exc
    prune_copies(models_dir, keep, protect=protect)
    return last


def prune_copies(models_dir: str | Path, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` most recently written numbered copies (never ``protect``)."""
    protected = _same_file_key(protect)
    candidates = []
    for step, path in retained_checkpoints(models_dir):
        with contextlib.suppress(FileNotFoundError):
            info = path.stat()
            if protected is not None and (info.st_dev, info.st_ino) == protected:
                continue
            candidates.append((info.st_mtime_ns, step, path))
    candidates.sort()
    removed = []
    for _, _, old in candidates[: max(0, len(candidates) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
            removed.append(old)
    return removed


def _same_file_key(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _retain_copy(source: Path, target: Path) -> None:
    """Link (or else copy) ``source`` to ``target`` atomically: a temp name first, then rename."""
    tmp = target.with_name(f".{target.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
        replace(tmp, target)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with open(source, "rb") as src, atomic_open(target, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)


def find_last_checkpoint(run_dir: str | Path) -> Path | None:
    """``run_dir/models/last.pth`` if it exists: what an automatic restart resumes from."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: --run-dir is a file, not a folder")
    last = run_dir / "models" / LAST_NAME
    if last.is_dir():
        raise CheckpointError(f"{last}: is a folder, not a checkpoint file; move it away to resume")
    return last if last.is_file() else None


def is_numbered_copy(path: str | Path) -> bool:
    """Whether ``path`` is a retained copy or a snapshot (``step_XXXXXXXX.pth``)."""
    return bool(_STEP_RE.match(Path(path).name))


def older_resume_note(models_dir: str | Path, resume: str | Path, step: int) -> str | None:
    """A line saying that ``resume`` (at ``step``) is older than ``last.pth``, or None."""
    last = Path(models_dir) / LAST_NAME
    resume = Path(resume)
    if not last.is_file() or (resume.exists() and resume.samefile(last)):
        return None
    last_step = stored_step(last)
    if last_step is None or last_step <= step:
        return None
    return (
        f"Note: {resume} (step {step}) is older than {last} (step {last_step}); this run's saves "
        f"replace last.pth, copies are pruned oldest-written first, {resume.name} and the snapshots "
        "are kept"
    )


def intact_copies_hint(models_dir: str | Path) -> str:
    """``'; intact copies: step_X.pth, ...'`` (the loadable copies and snapshots, newest first) or ''."""
    intact = []
    for kind, _, path in reversed(list_checkpoints(models_dir)):
        if kind == "last":
            continue
        try:
            read_checkpoint(path, mmap=True)
        except CheckpointError:
            continue
        intact.append(str(path))
        if len(intact) == 3:
            break
    if not intact:
        return "; no intact step_*.pth copy exists"
    return f"; intact copies: {', '.join(intact)} (resume one with --resume {intact[0]})"


# --------------------------------------------------------------------------------------------------
# RNG states as weights-only-loadable values


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch-CPU and CUDA generator states as tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where this process has as many GPUs)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def remove_stale_temp_files(models_dir: str | Path) -> list[Path]:
    """Delete temporary files a killed save left behind (``.last.pth.*.tmp`` and link temps).

    Only call this while holding the run folder's lock (``torchsae.train.runlock``): another live run's
    temporary files look the same.
    """
    removed = []
    folders = [Path(models_dir), Path(models_dir) / SNAPSHOT_DIR]
    for entry in (e for folder in folders if folder.is_dir() for e in folder.glob(".*.tmp")):
        if entry.name.startswith((f".{LAST_NAME}.", ".step_")):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed
