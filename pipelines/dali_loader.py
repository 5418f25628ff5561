"""The NVIDIA DALI backend: sharded file reader, "mixed" (GPU) or CPU decode, resize to R.

Why DALI: on a GPU machine nvJPEG decodes and resizes on the device, so the host only reads file bytes
and the CPU stops being the bottleneck. Where there is no GPU, the same pipeline runs with
``device_id=None`` on the CPU (libjpeg-turbo), which is what CI tests.

Sample order: the index's files are handed to ``fn.readers.file`` in one seeded permutation (so a
contiguous shard is not a run of consecutive video frames), with each file's label set to its row in
the index; the reader shards with ``shard_id``/``num_shards``, shuffles with its seeded buffer and pads
the last batch. The order therefore differs from the DataLoader backend's, but both return the sample
indices, and masks come from the same side index. Resume uses DALI's own reader checkpoints.

DALI is imported lazily: the package is optional (``pip install 'torchsae[dali]'``, or
``'torchsae[dali-cu12]'`` for CUDA 12; Linux only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from torchsae.errors import TorchSAEError


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported here."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _require_dali() -> None:
    if not dali_available():
        raise TorchSAEError(
            "backend 'dali': NVIDIA DALI is not installed; pip install 'torchsae[dali]' (CUDA 13) or "
            "'torchsae[dali-cu12]' (CUDA 12), Linux only; or use --backend torch"
        )


def _build_pipeline(
    files: list[str],
    labels: list[int],
    resolution: int,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    threads: int,
    device_id: int | None,
    checkpoint: str | None,
):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(enable_checkpointing=True)
    def faces():
        jpegs, label = fn.readers.file(
            files=files,
            labels=labels,
            shard_id=rank,
            num_shards=world_size,
            random_shuffle=True,
            seed=seed,
            pad_last_batch=True,
            name="Reader",
        )
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.BGR)
        images = fn.resize(images, resize_x=resolution, resize_y=resolution, interp_type=types.INTERP_CUBIC)
        return fn.transpose(images, perm=[2, 0, 1]), label

    pipe = faces(
        batch_size=batch_size,
        num_threads=threads,
        device_id=device_id,
        seed=seed,
        checkpoint=checkpoint,
        prefetch_queue_depth=2,
    )
    pipe.build()
    return pipe


class DaliLoader:
    """Endless iterator of ``{"images": uint8 [n,3,R,R] BGR, "indices": int64 [n], "failed": 0}``.

    Images are on the GPU when ``device`` is CUDA (mixed decode), else on the CPU. Files were validated
    by the side index, so a decode error here is a real I/O fault and is raised, not skipped.
    """

    def __init__(
        self,
        paths: Sequence[str],
        resolution: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        workers: int = 2,
        device: str | torch.device = "cpu",
    ) -> None:
        _require_dali()
        if not paths:
            raise TorchSAEError("the faceset index has no usable files; nothing to train on")
        device = torch.device(device)
        order = np.random.default_rng(seed).permutation(len(paths))
        self._files = [str(paths[i]) for i in order]
        self._labels = order.tolist()
        self._args = (resolution, batch_size, rank, world_size, seed, max(1, workers))
        self._device_id = (device.index or 0) if device.type == "cuda" else None
        self.failed = 0
        self._iterator = None
        self._checkpoint: str | None = None

    def _start(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        pipe = _build_pipeline(self._files, self._labels, *self._args, self._device_id, self._checkpoint)
        return DALIGenericIterator(pipe, ["images", "indices"], size=-1)

    def __iter__(self) -> DaliLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._start()
        try:
            out = next(self._iterator)[0]
        except RuntimeError as exc:
            raise TorchSAEError(f"DALI pipeline failed: {str(exc).splitlines()[0]}") from exc
        return {"images": out["images"], "indices": out["indices"].view(-1).long(), "failed": 0}

    def state_dict(self) -> dict[str, Any]:
        """DALI's reader checkpoint (a string): where the next batch starts."""
        if self._iterator is not None:
            self._checkpoint = self._iterator.checkpoints()[0]
        return {"dali_checkpoint": self._checkpoint, "failed": self.failed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self._checkpoint = state.get("dali_checkpoint")

    def close(self) -> None:
        """Drop the pipeline (a fresh one starts from the stored checkpoint on the next ``next``)."""
        self._iterator = None
