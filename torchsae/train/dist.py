"""torchrun environment -> device and process group.

Why one small module: every rank must agree on the backend (NCCL on CUDA, gloo on the CPU), on which
rank writes files (rank 0 only) and on how per-rank state is gathered into the one checkpoint. Run as
a plain process (no ``WORLD_SIZE`` in the environment) everything degenerates to world size 1 without
creating a process group, so ``torchsae train`` works unchanged on a laptop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from torchsae.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when running as a single process

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, previews and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU; ``cuda`` -> ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"train.device {name!r}: not a torch device (use auto, cpu, cuda or cuda:N)"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device {name!r}: CUDA is not available on this machine; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={value!r}: not an integer") from exc


def init_distributed(device_name: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (set by torchrun) and join the process group.

    The rendezvous address comes from torchrun's ``MASTER_ADDR``/``MASTER_PORT`` (``env://``), so
    multi-node jobs need only torchrun's own flags.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size <= 1:
        return DistInfo(0, 0, 1, device, None)
    # NCCL on CUDA where torch has it; torch's Windows builds have no NCCL, and gloo (slower, but it
    # all-reduces CUDA tensors too) takes its place there
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = device
        # torchrun's agent keeps one store across --max-restarts; the keys of a restarted attempt
        # must not meet the dead attempt's (a stale gloo address means "connection refused")
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        prefixed = dist.PrefixStore(f"torchsae/attempt_{attempt}", store)
        dist.init_process_group(store=prefixed, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, local_rank, world_size, device, backend)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (a no-op for a single process)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def gather_to_main(info: DistInfo, obj: Any) -> dict[int, Any] | None:
    """``{rank: obj}`` on rank 0 (None elsewhere): per-rank RNG and data states for the checkpoint."""
    if not info.distributed:
        return {0: obj}
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return dict(enumerate(gathered)) if info.is_main else None


def any_true(info: DistInfo, flags: torch.Tensor) -> torch.Tensor:
    """Element-wise logical OR of a bool tensor over ranks, so every rank takes the same decisions."""
    if not info.distributed:
        return flags
    value = flags.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.bool()
