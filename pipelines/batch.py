"""Assembling the training Batch from both sides: loader images + index masks + device augmentation.

Why one place: the trainer should see a single object that, per step, yields the Batch dict of the
contract (docs/INTERFACES.md) whatever the backend — DALI, DataLoader or synthetic — and that saves
and restores the data position inside the checkpoint. Masks never travel through the loaders: the
loaders return sample indices and the masks are gathered here from each side's memory-mapped index,
so every backend gets the same masks for the same file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipelines.index import FacesetIndex
from pipelines.synthetic import synthetic_batches
from torchsae.config import Config
from torchsae.errors import TorchSAEError

BATCH_KEYS = ("warped_a", "target_a", "mask_a", "em_a", "warped_b", "target_b", "mask_b", "em_b")
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

    ``augmenter`` is called as ``aug(images_u8, masks_u8, step=, rank=, side=, ct_reference=)`` (see
    ``pipelines.augment.Augmenter``); on side B it gets side A's images as the colour-transfer
    reference when ``ct_mode`` is not ``none``.
    """

    def __init__(
        self,
        loaders: dict[str, Any],
        indexes: dict[str, FacesetIndex],
        augmenter: Augment,
        device: str | torch.device,
        rank: int = 0,
        ct_mode: str = "none",
    ) -> None:
        self.loaders, self.indexes, self.augmenter = loaders, indexes, augmenter
        self.device, self.rank, self.ct_mode = torch.device(device), rank, ct_mode
        self.step = 0

    def _side(self, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = next(self.loaders[side])
        indices = batch["indices"].cpu()
        masks = torch.from_numpy(self.indexes[side].gather_masks(indices.numpy()))
        return _to_device(batch["images"], self.device), _to_device(masks, self.device), indices

    def next_batch(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """The Batch for ``step`` (default: one past the previous call's step)."""
        step = self.step if step is None else step
        images_a, masks_a, index_a = self._side("a")
        images_b, masks_b, index_b = self._side("b")
        out: dict[str, torch.Tensor] = {}
        aug_a = self.augmenter(images_a, masks_a, step=step, rank=self.rank, side="a", ct_reference=None)
        reference = images_a if self.ct_mode != "none" else None
        aug_b = self.augmenter(images_b, masks_b, step=step, rank=self.rank, side="b", ct_reference=reference)
        for side, aug in (("a", aug_a), ("b", aug_b)):
            for key in ("warped", "target", "mask", "em"):
                out[f"{key}_{side}"] = aug[key]
        out["index_a"], out["index_b"] = _to_device(index_a, self.device), _to_device(index_b, self.device)
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
        return {"step": self.step, "a": self.loaders["a"].state_dict(), "b": self.loaders["b"].state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for side in ("a", "b"):
            self.loaders[side].load_state_dict(state[side])

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


class SyntheticBatches:
    """Random Batches held in device memory: measures the model and trainer without any data path.

    A small pool of fixed random batches (``pipelines.synthetic``) is made once and cycled, so
    producing a step costs nothing.
    """

    def __init__(
        self, batch_size: int, resolution: int, device: str | torch.device, seed: int = 0, pool: int = 2
    ):
        self.device = torch.device(device)
        self._pool = synthetic_batches(pool, batch_size, resolution, self.device, seed)
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
) -> TrainBatches | SyntheticBatches:
    """Everything between the config and the Batch: indexes (built if stale), loaders, augmenter."""
    resolution, batch_size = cfg.model.resolution, cfg.train.batch_size
    data = cfg.data
    if data.backend == "synthetic":
        return SyntheticBatches(batch_size, resolution, device, seed=cfg.train.seed + rank)
    from pipelines import make_loader
    from pipelines.augment import Augmenter
    from pipelines.index import ensure_index

    indexes, loaders = {}, {}
    for side, folder in (("a", data.data_dir_a), ("b", data.data_dir_b)):
        if not folder:
            raise TorchSAEError(
                f"data.data_dir_{side} is not set (side {side.upper()}: a folder of face JPEGs)"
            )
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
        indexes[side] = index
        if rank == 0:
            _warn_face_type(index, cfg.model.face_type)
        # the two sides draw independent orders: offset the seed so A and B are not in lockstep
        seed = cfg.train.seed + (0 if side == "a" else 1_000_003)
        loaders[side] = make_loader(
            data.backend, index, batch_size, rank, world_size, seed, device, data.workers, data.uniform_yaw
        )
    if augmenter is None:
        augmenter = Augmenter(resolution, data, seed=cfg.train.seed)
    return TrainBatches(loaders, indexes, augmenter, device, rank=rank, ct_mode=data.ct_mode)


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
