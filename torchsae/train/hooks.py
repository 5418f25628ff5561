"""Ways for tests and tools to look into and steer a training run through parameters, not patches.

``train(cfg, hooks=TrainHooks(...))``: production code reads no test-only environment variable; the
DDP tests install these from their own torchrun entry point (``tests/helpers_train_hooks.py``), and
``benchmarks/gpu_check.py`` times the data stream and injects NaN batches through ``open_stream``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from torchsae.config import Config
from torchsae.train.dist import DistInfo


@dataclass(frozen=True)
class TrainHooks:
    """Every field optional; a hook that raises fails the run as any exception in the loop does."""

    # opens this rank's data stream from the effective config (default: train.data.rank_train_stream);
    # a wrapper may call that itself (timing, injected batches) or hand out fixed data
    open_stream: Callable[[Config, DistInfo], Any] | None = None
    # (step, rank) at the start of every step, before anything of it runs (fault injection)
    on_step: Callable[[int, int], None] | None = None
    # (prepared micro-batch, rank) for every micro-batch the G step trains on
    on_batch: Callable[[dict[str, torch.Tensor], int], None] | None = None
    # (model, rank) once the run has ended normally, after its last save
    on_finish: Callable[[torch.nn.Module, int], None] | None = None


NO_HOOKS = TrainHooks()
