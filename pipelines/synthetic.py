"""The one synthetic batch generator: random tensors of the Batch contract, no files read.

Used by the ``synthetic`` backend (``pipelines.batch.SyntheticBatches``), the synthetic preview set,
the memory probe and estimate, and ``torchsae bench train``; all draw from here, so their batches
have the same keys, shapes and value ranges as the real pipeline's (docs/INTERFACES.md, "Batch").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipelines.sides import SAEHD_SIDE_NAMES

SIDE_CHANNELS = (("warped", 3), ("target", 3), ("mask", 1), ("em", 1))
Batch = dict[str, torch.Tensor]


def synthetic_batches(
    count: int,
    batch_size: int,
    resolution: int,
    device: torch.device | str,
    seed: int = 0,
    names: Sequence[str] = SAEHD_SIDE_NAMES,
) -> list[Batch]:
    """``count`` random Batches, drawn one after another from one generator seeded ``seed``.

    Per side of ``names`` (default SAEHD's ``a``, ``b``) ``warped, target, mask, em`` uniform in
    [0, 1) and ``index`` = 0..batch_size-1.
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        batch: Batch = {}
        for side in names:
            for key, channels in SIDE_CHANNELS:
                value = torch.rand(batch_size, channels, resolution, resolution, generator=generator)
                batch[f"{key}_{side}"] = value.to(device)
            batch[f"index_{side}"] = torch.arange(batch_size, dtype=torch.int64, device=device)
        batches.append(batch)
    return batches


def synthetic_batch(
    batch_size: int,
    resolution: int,
    device: torch.device | str,
    seed: int = 0,
    names: Sequence[str] = SAEHD_SIDE_NAMES,
) -> Batch:
    """One random Batch (the first of :func:`synthetic_batches`)."""
    return synthetic_batches(1, batch_size, resolution, device, seed, names)[0]
