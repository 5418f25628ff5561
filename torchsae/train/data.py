"""The trainer's two views of the data: the per-rank training stream and the fixed preview set.

Kept apart from the loop so the loop does not depend on how the pipelines package builds batches.
"""

from __future__ import annotations

from typing import Any

import torch

from torchsae.config import Config
from torchsae.errors import ConfigError
from torchsae.train.dist import DistInfo


def make_train_batches(cfg: Config, info: DistInfo) -> Any:
    """This rank's endless stream of Batch dicts (``next()``, ``state_dict``, ``load_state_dict``, ``close``)."""
    if not cfg.data.data_dir_a or not cfg.data.data_dir_b:
        raise ConfigError("data.data_dir_a and data.data_dir_b: both facesets are needed (--data-dir-a/-b)")
    from pipelines.batch import TrainBatches

    return TrainBatches(cfg, rank=info.rank, world_size=info.world_size, device=info.device)


def make_preview_samples(cfg: Config, count: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``count`` fixed, unwarped faces per side with their masks, the same every time the run starts."""
    from pipelines.batch import preview_samples

    return preview_samples(cfg, count, device)
