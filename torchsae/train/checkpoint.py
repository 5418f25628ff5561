"""Checkpoints: one self-contained file per save, written atomically and loaded weights-only.

Why this shape:

* ``torch.load(weights_only=True)`` refuses arbitrary pickles, so a checkpoint downloaded from
  somewhere cannot run code. The price is that everything inside must be tensors or plain containers
  of primitives: RNG states become tensors/lists, the config is ``Config.to_dict()``.
* A checkpoint only counts once it is complete: it is written to a temporary name, fsynced and renamed
  (``torchsae.fileio.atomic_open``), so ``kill -9`` at any moment leaves the previous ``last.pth``
  loadable.
* A checkpoint with non-finite weights is refused at save time: resuming from it could never recover.

Layout inside the run folder: ``models/last.pth`` (always the newest) plus retained copies
``models/step_XXXXXXXX.pth`` (the ``keep`` newest; hard links of ``last.pth`` where the file system
allows, so retention costs no extra write).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_open, replace

FORMAT = "torchsae-checkpoint"
VERSION = 1
LAST_NAME = "last.pth"
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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically; refuse non-finite model or discriminator weights.

    ``state`` must carry at least the keys in ``REQUIRED_KEYS``; ``format``/``version`` are filled in
    when absent. Tensors may live on any device; torch.save records them and ``load_checkpoint`` maps
    them to the CPU.
    """
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: refusing to save a checkpoint without {', '.join(missing)}")
    weights = {f"model.{k}": v for k, v in state["model"].items()}
    for name, disc in (state.get("discriminators") or {}).items():
        weights.update({f"discriminators.{name}.{k}": v for k, v in disc.items()})
    bad = non_finite_tensors(weights)
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise CheckpointError(f"{path}: refusing to save non-finite weights ({shown})")
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a TorchSAE checkpoint onto the CPU with ``weights_only=True``; errors name the file.

    ``mmap=True`` maps the tensors instead of reading them: for callers that need only the config or
    the step (resolving a run's config before training loads the weights for real).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable TorchSAE checkpoint ({first})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a TorchSAE checkpoint (format key missing or different)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')!r}, this TorchSAE reads {VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


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


def save_training_checkpoint(models_dir: str | Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``models_dir/last.pth``, retain a numbered copy and prune to the ``keep`` newest copies.

    ``keep == 0`` keeps only ``last.pth``. Returns the path of ``last.pth``.
    """
    models_dir = Path(models_dir)
    last = models_dir / LAST_NAME
    save_checkpoint(last, state)
    if keep > 0:
        _retain_copy(last, models_dir / step_name(int(state["step"])))
    copies = retained_checkpoints(models_dir)
    for _, old in copies[: max(0, len(copies) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return last


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
    last = Path(run_dir) / "models" / LAST_NAME
    return last if last.is_file() else None


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
    """Delete temporary files a killed save left behind (``.last.pth.*.tmp`` and link temps)."""
    removed = []
    for entry in Path(models_dir).glob(".*.tmp"):
        if entry.name.startswith((f".{LAST_NAME}.", ".step_")):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed
