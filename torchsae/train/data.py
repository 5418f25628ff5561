"""The trainer's two views of the data: the per-rank training stream and the fixed preview set.

Why the preview set is read here and not drawn from the training stream: it must be the same faces at
every preview and after every resume, and taking it must not move the stream or any random generator
(that would break bit-exact resume). So it decodes ``count`` evenly spaced files of each side directly,
unwarped, with their index masks — deterministic and free of randomness.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchsae.config import Config
from torchsae.errors import TorchSAEError
from torchsae.train.dist import DistInfo


def rank_train_stream(cfg: Config, info: DistInfo, sides: Any = None) -> Any:
    """This rank's endless Batch stream (``next``, ``state_dict``, ``load_state_dict``, ``close``):
    ``pipelines.batch.make_train_batches`` for ``info``'s rank, world size and device (``sides``:
    default SAEHD's A/B)."""
    from pipelines.batch import make_train_batches

    return make_train_batches(
        cfg,
        rank=info.rank,
        world_size=info.world_size,
        device=info.device,
        progress=info.is_main,
        sides=sides,
    )


def make_preview_samples(
    cfg: Config, count: int, device: torch.device, sides: Any = None
) -> dict[str, torch.Tensor]:
    """``target_x, mask_x`` for ``count`` fixed faces of each side ``x`` of ``sides`` (default
    ``pipelines.sides.data_sides``; SAEHD: ``target_a, mask_a, target_b, mask_b``; BGR [0,1], NCHW)."""
    from pipelines.sides import data_sides

    resolution = cfg.model.resolution
    sides = data_sides(cfg) if sides is None else sides
    if cfg.data.backend == "synthetic":
        from pipelines.synthetic import synthetic_batch

        batch = synthetic_batch(count, resolution, device, cfg.train.seed, [side.name for side in sides])
        return {
            f"{key}_{side.name}": batch[f"{key}_{side.name}"] for side in sides for key in ("target", "mask")
        }

    from pipelines.decode import decode_sample
    from pipelines.index import ensure_index

    out = {}
    for side in sides:
        index = ensure_index(
            side.data_dir,
            resolution,
            cfg.data.mask_policy,
            progress=False,
            face_type=cfg.model.face_type,
            index_root=cfg.data.index_dir,
        )
        rows = np.unique(np.linspace(0, len(index) - 1, num=count).round().astype(np.int64))
        decoded = [_decode_or_next(index, int(i), resolution, decode_sample) for i in rows]
        rows = np.array([row for row, _ in decoded], np.int64)
        images = np.stack([image for _, image in decoded])
        masks = index.gather_masks(rows)[:, :1]
        out[f"target_{side.name}"] = (
            torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).to(device)
        )
        out[f"mask_{side.name}"] = torch.from_numpy(masks).float().div(255.0).to(device)
    return out


def _decode_or_next(index: Any, row: int, resolution: int, decode_sample: Any) -> tuple[int, np.ndarray]:
    """``(row, image)`` of the first file from ``row`` on that still decodes (as the loaders replace a
    file gone bad since indexing); a one-line error naming the file when none does."""
    paths = index.paths
    for attempt in range(len(paths)):
        candidate = (row + attempt) % len(paths)
        try:
            with open(paths[candidate], "rb") as handle:
                return candidate, decode_sample(handle.read(), resolution, index.recrop[candidate])
        except (OSError, ValueError):
            continue
    raise TorchSAEError(f"{paths[row]}: no file of this faceset decodes any more; run torchsae index again")
