"""Assembling the training Batch from every side: loader images + index masks + device augmentation.

Why one place: the trainer should see a single object that, per step, yields the Batch dict of the
contract (docs/INTERFACES.md) whatever the backend — DALI, DataLoader or synthetic — and that saves
and restores the data position inside the checkpoint. Masks never travel through the loaders: the
loaders return sample indices and the masks are gathered here from each side's memory-mapped index,
so every backend gets the same masks for the same file. The sides and their policies are
``pipelines.sides.DataSide`` values (SAEHD: A and B from ``pipelines.sides.data_sides``); keys, loaders
and saved positions are built from their names, so nothing here knows there are two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pipelines.index import FacesetIndex
from pipelines.sides import (
    LOADER_SEED_STRIDE,
    SAEHD_SIDE_NAMES,
    SIDE_ENTRIES,
    DataSide,
    batch_keys,
    check_sides,
    data_sides,
)
from pipelines.synthetic import synthetic_batches
from torchsae.config import Config
from torchsae.errors import TorchSAEError

BATCH_KEYS = batch_keys()  # SAEHD's: warped_a, target_a, mask_a, em_a, warped_b, ... em_b
Augment = Callable[..., dict[str, torch.Tensor]]


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device without blocking the host; pinned first so the copy is truly asynchronous."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class TrainBatches:
    """Per step: one batch per side from its loader, masks from its index, augmentation on the device.

    ``loaders`` and ``indexes`` are keyed by side name, in the order of ``sides`` (loaded, then
    augmented, in that order). ``augmenter`` is called as ``aug(images_u8, masks_u8, step=, rank=,
    side=, ct_reference=)`` (see ``pipelines.augment.Augmenter``); a side with colour transfer gets its
    ``ct_source`` side's raw images of this step as the reference (SAEHD: B gets A's when ``ct_mode``
    is set), every other side ``None``.
    """

    def __init__(
        self,
        loaders: dict[str, Any],
        indexes: dict[str, FacesetIndex],
        augmenter: Augment,
        device: str | torch.device,
        rank: int = 0,
        *,
        sides: Sequence[DataSide],
    ) -> None:
        self.sides = check_sides(sides)
        if set(loaders) != {side.name for side in self.sides}:
            raise ValueError(f"loaders {sorted(loaders)} do not match the sides {[s.name for s in sides]}")
        self.loaders, self.indexes, self.augmenter = loaders, indexes, augmenter
        self.device, self.rank = torch.device(device), rank
        self.step = 0

    def _side(self, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = next(self.loaders[side])
        indices = batch["indices"].cpu()
        masks = torch.from_numpy(self.indexes[side].gather_masks(indices.numpy()))
        return _to_device(batch["images"], self.device), _to_device(masks, self.device), indices

    def next_batch(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """The Batch for ``step`` (default: one past the previous call's step)."""
        step = self.step if step is None else step
        loaded = {side.name: self._side(side.name) for side in self.sides}
        out: dict[str, torch.Tensor] = {}
        for side in self.sides:
            images, masks, _ = loaded[side.name]
            reference = loaded[side.ct_source][0] if side.colour_transfer else None
            aug = self.augmenter(
                images, masks, step=step, rank=self.rank, side=side.name, ct_reference=reference
            )
            for key in SIDE_ENTRIES:
                out[f"{key}_{side.name}"] = aug[key]
        for side in self.sides:
            out[f"index_{side.name}"] = _to_device(loaded[side.name][2], self.device)
        self.step = step + 1
        return out

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next_batch()

    @property
    def failed(self) -> int:
        """Files that failed to decode so far (replaced by others); the trainer logs this."""
        return sum(int(getattr(loader, "failed", 0)) for loader in self.loaders.values())

    def state_dict(self) -> dict[str, Any]:
        """``{"step": ..., <side name>: loader state, ...}`` (SAEHD: ``step``, ``a``, ``b``)."""
        return {"step": self.step, **{side.name: self.loaders[side.name].state_dict() for side in self.sides}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for side in self.sides:
            self.loaders[side.name].load_state_dict(state[side.name])

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


class SyntheticBatches:
    """Random Batches held in device memory: measures the model and trainer without any data path.

    A small pool of fixed random batches (``pipelines.synthetic``) is made once and cycled, so
    producing a step costs nothing.
    """

    def __init__(
        self,
        batch_size: int,
        resolution: int,
        device: str | torch.device,
        seed: int = 0,
        pool: int = 2,
        names: Sequence[str] = SAEHD_SIDE_NAMES,
    ):
        self.device = torch.device(device)
        self._pool = synthetic_batches(pool, batch_size, resolution, self.device, seed, names)
        self.step = 0
        self.failed = 0

    def next_batch(self, step: int | None = None) -> dict[str, torch.Tensor]:
        step = self.step if step is None else step
        self.step = step + 1
        return self._pool[step % len(self._pool)]

    def __iter__(self) -> SyntheticBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def close(self) -> None:
        self._pool = []


def make_train_batches(
    cfg: Config,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    augmenter: Augment | None = None,
    progress: bool = True,
    sides: Sequence[DataSide] | None = None,
) -> TrainBatches | SyntheticBatches:
    """Everything between the config and the Batch: indexes (built if stale), loaders, augmenter.

    ``sides`` (default ``pipelines.sides.data_sides(cfg)``, SAEHD's A/B) say which facesets are read
    and how each is augmented; ``cfg.data`` gives what all sides share (backend, workers, masks,
    index folder)."""
    resolution, batch_size = cfg.model.resolution, cfg.train.batch_size
    data = cfg.data
    sides = data_sides(cfg) if sides is None else check_sides(sides)
    if data.backend == "synthetic":
        names = [side.name for side in sides]
        return SyntheticBatches(batch_size, resolution, device, seed=cfg.train.seed + rank, names=names)
    from pipelines import make_loader
    from pipelines.augment import Augmenter
    from pipelines.index import ensure_index

    indexes, loaders = {}, {}
    for side in sides:
        folder = side.data_dir
        if not folder:
            option = f"data.{side.option}" if side.option else f"side {side.name}'s data_dir"
            raise TorchSAEError(f"{option} is not set (side {side.name.upper()}: a folder of face JPEGs)")
        # the model's face type: files cropped for another one are re-cropped (spec §5, "Crop")
        index = ensure_index(
            folder,
            resolution,
            data.mask_policy,
            progress=progress and rank == 0,
            face_type=cfg.model.face_type,
            index_root=data.index_dir,
        )
        if len(index) == 0:
            raise TorchSAEError(f"{folder}: no usable face images (see {index.directory / 'skipped.json'})")
        indexes[side.name] = index
        if rank == 0:
            _warn_face_type(index, cfg.model.face_type)
        # the sides draw independent orders: offset the seed by the side's key so none is in lockstep
        seed = cfg.train.seed + side.key * LOADER_SEED_STRIDE
        loaders[side.name] = make_loader(
            data.backend, index, batch_size, rank, world_size, seed, device, data.workers, side.uniform_yaw
        )
    if augmenter is None:
        augmenter = Augmenter(resolution, None, seed=cfg.train.seed, sides=sides)
    return TrainBatches(loaders, indexes, augmenter, device, rank=rank, sides=sides)


def _warn_face_type(index: FacesetIndex, model_face_type: str) -> None:
    """Say once per side that files cropped for another face type than the model's are re-cropped.

    Why: DeepFaceLab re-crops them silently (spec §5, "Crop"), but here they leave the DCT-scaled fast
    path (full-size decode + warp) and DALI, so a user should know why loading got slower.
    """
    import warnings

    from torchsae.dfl.geometry import SHORT_FACE_TYPES

    wanted = SHORT_FACE_TYPES.get(model_face_type, model_face_type)
    others = sorted({e["face_type"] for e in index.entries if e["face_type"] not in (None, wanted)})
    if others:
        count = sum(e["face_type"] in others for e in index.entries)
        warnings.warn(
            f"{index.root}: {count} of {len(index)} faces are {', '.join(others)} crops but the model is "
            f"{wanted}; they are re-cropped to it on the DataLoader backend",
            stacklevel=3,
        )
