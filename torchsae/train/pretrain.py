"""Pretraining mode and leaving it (spec §4 ``pretrain``), as DeepFaceLab does it.

While pretraining, both sides draw from one generic faceset (``data.pretrain_dir``) and DFL forces:
random warp off, flips on for both sides, uniform yaw on, no HSV shift, no colour transfer; no GAN and
no style terms; no lr dropout. :func:`torchsae.config.effective_config` (re-exported here) returns
the complete config with all of these applied, and the trainer, the memory planner, the loss, the
optimisers and the data pipeline only read it; the one thing still keyed on ``train.pretrain`` itself is the code-discriminator step, which
DFL skips while keeping the true-face G term (``SAEHDLoss.trains_code_discriminator``). Warp off
also means LIAE trains without ``inter_ab``, as in DFL. The forced values are never written into the
run's config: the checkpoint keeps the user's own settings, which apply again once pretraining ends.

Leaving pretraining (resuming a pretrain checkpoint in a run that does not ask for ``--pretrain``):
the inter layers are re-initialised (DF ``inter``; LIAE ``inter_ab`` and ``inter_b``), the encoder
and decoders are kept, and the step counter restarts at 0. Like DFL, the optimiser moments are kept;
the data stream and RNGs restart because the faceset changed.
"""

from __future__ import annotations

import torch

from torchsae.config import (  # effective_config: re-exported (it lives with the config)
    Config,
    effective_config,
)
from torchsae.models.layers import glorot_init_
from torchsae.models.registry import model_family
from torchsae.train.checkpoint import TrainingCheckpoint

INIT_SEED_OFFSET = 7919  # the re-initialised inters draw from seed + this, away from the model's init


pretrain_view = effective_config  # the former name (it forced the data settings only)


def leaving_pretrain(state: TrainingCheckpoint, cfg: Config) -> bool:
    """Whether resuming ``state`` (a loaded checkpoint) ends pretraining under ``cfg``."""
    stored = (state.config or {}).get("train") or {}
    return bool(stored.get("pretrain")) and not cfg.train.pretrain


def inter_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The submodules DFL re-initialises when pretraining ends (the family's ``pretrain_reinit``)."""
    return model_family(model.config).pretrain_reinit


def reinit_inters(model: torch.nn.Module, seed: int) -> tuple[str, ...]:
    """Glorot-initialise the inter layers again from ``seed`` (the global RNGs are left untouched)."""
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    names = inter_names(model)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + INIT_SEED_OFFSET)
        for name in names:
            glorot_init_(getattr(model, name))
    return names


def leave_pretrain(model: torch.nn.Module, cfg: Config, source: object) -> str:
    """Re-initialise the inters for the end of pretraining; return the message to print."""
    names = reinit_inters(model, cfg.train.seed)
    return (
        f"{source}: leaving pretraining: re-initialised {', '.join(names)}, kept the encoder and "
        "decoders; the step counter restarts at 0"
    )
