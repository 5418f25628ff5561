"""The DataLoader backend: per-rank sharded sample streams, batched libjpeg-turbo decoding in workers.

Why a batched ``__getitems__`` and a hand-written sampler: one Python call per *batch* decodes every
JPEG (DCT-scaled, see ``pipelines.decode``) straight into a preallocated array (no per-sample tensors,
no default collate), and the sample order is a pure function of (seed, epoch, rank, position), so a
checkpoint resumes the exact stream.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from pipelines import lifeline
from pipelines.decode import decode_sample
from torchsae.errors import TorchSAEError

# Bad-file replacement gives up after this many consecutive failures (a faceset that is mostly broken
# is an error, not something to paper over).
_MAX_REPLACEMENTS = 64


class ShardedStream:
    """An endless per-rank stream of sample indices with DistributedSampler semantics.

    Epoch ``e`` draws one permutation of ``range(n)`` from ``seed + e`` (identical on every rank), pads
    it by wrapping to a multiple of ``world`` and gives rank ``r`` the items ``r::world``. Ranks are
    therefore disjoint within an epoch apart from the at most ``world - 1`` padding repeats, and their
    union covers the set. The stream is addressed by (epoch, position) so it can resume exactly.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        if n < 1:
            raise TorchSAEError("the faceset index has no usable files; nothing to train on")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.per_rank = math.ceil(n / world)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch`` (length ``per_rank``)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=generator).numpy()
        else:
            order = np.arange(self.n)
        total = self.per_rank * self.world
        if total > self.n:
            order = np.resize(order, total)  # wraps cyclically, also when world > 2 * n
        return order[self.rank : total : self.world]

    def batches(self, batch_size: int, epoch: int = 0, position: int = 0) -> Iterator[list[int]]:
        """Endless fixed-size batches starting at (epoch, position); batches may span epochs."""
        pending: list[int] = []
        while True:
            pending.extend(self.epoch_indices(epoch)[position:].tolist())
            epoch, position = epoch + 1, 0
            start = 0  # slice by offset: dropping each batch from the list would copy the epoch's rest
            while len(pending) - start >= batch_size:
                yield pending[start : start + batch_size]
                start += batch_size
            del pending[:start]

    def advance(self, epoch: int, position: int, samples: int) -> tuple[int, int]:
        """The (epoch, position) reached after ``samples`` more samples."""
        total = position + samples
        return epoch + total // self.per_rank, total % self.per_rank


class _BatchSampler:
    """Wraps ShardedStream.batches for DataLoader's ``batch_sampler`` (which only needs ``__iter__``)."""

    def __init__(self, stream: ShardedStream, batch_size: int, epoch: int, position: int) -> None:
        self.stream, self.batch_size, self.epoch, self.position = stream, batch_size, epoch, position

    def __iter__(self) -> Iterator[list[int]]:
        return self.stream.batches(self.batch_size, self.epoch, self.position)


class JpegBatchDataset:
    """Map-style dataset whose ``__getitems__`` decodes a whole batch into one uint8 NCHW tensor.

    A file that fails to decode is counted and replaced by the next file in index order that decodes
    (deterministic, so a resumed run sees the same replacement); ``indices`` reports what was used.
    ``recrop`` (the index's float32 [N, 2, 3], NaN rows: resize only) re-crops files of another face
    type than the model's (``pipelines.decode.decode_recropped``); the others keep the fast path.
    """

    def __init__(self, paths: Sequence[str], resolution: int, recrop: np.ndarray | None = None) -> None:
        self.paths = list(paths)
        self.resolution = resolution
        if recrop is not None and len(recrop) != len(self.paths):
            raise ValueError(f"recrop has {len(recrop)} rows for {len(self.paths)} files")
        self.recrop = None if recrop is None else np.asarray(recrop, np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def _decode_into(self, index: int, out: np.ndarray) -> tuple[int, int]:
        """Decode sample ``index`` (or its replacement) into ``out``; return (used index, failures)."""
        for attempt in range(_MAX_REPLACEMENTS):
            candidate = (index + attempt) % len(self.paths)
            try:
                with open(self.paths[candidate], "rb") as handle:
                    data = handle.read()
                mat = None if self.recrop is None else self.recrop[candidate]
                decode_sample(data, self.resolution, mat, out)
                return candidate, attempt
            except (OSError, ValueError):
                continue
        raise TorchSAEError(
            f"{self.paths[index]}: this and the next {_MAX_REPLACEMENTS - 1} files failed to decode; "
            "rebuild the index (torchsae index) or check the disk"
        )

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        res = self.resolution
        nchw = np.empty((len(indices), 3, res, res), dtype=np.uint8)
        scratch = np.empty((res, res, 3), dtype=np.uint8)  # libjpeg-turbo writes interleaved BGR
        used = np.empty(len(indices), dtype=np.int64)
        failed = 0
        for slot, index in enumerate(indices):
            used[slot], misses = self._decode_into(int(index), scratch)
            failed += misses
            # de-interleave straight into the batch's planes: 8x cheaper than a torch permute copy
            cv2.split(scratch, [nchw[slot, 0], nchw[slot, 1], nchw[slot, 2]])
        return {"images": torch.from_numpy(nchw), "indices": torch.from_numpy(used), "failed": failed}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])


def _one_cv2_thread(_worker_id: int) -> None:
    """Each worker is one core's worth of decoding; OpenCV's own thread pool would oversubscribe."""
    cv2.setNumThreads(1)


def _init_worker(worker_id: int, trainer_pid: int) -> None:
    """One OpenCV thread, and die with the trainer even after ``kill -9`` (``pipelines.lifeline``)."""
    lifeline.tie_worker(trainer_pid)
    _one_cv2_thread(worker_id)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a fork server, not by forking the trainer.

    Why: forking a process that already runs threads (DALI's executor, TensorBoard's writer, torch's
    intra-op pool, tqdm's monitor) copies locks held by those threads into the child, where nothing
    will ever release them; the worker then hangs forever. The fork server is a clean single-threaded
    process that imports this module once, so each worker still starts in milliseconds. Where there is
    no fork server (Windows), workers are spawned: a fresh interpreter each, slower to start, equally safe.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    # lifeline first: at preload it ties the fork server's life to the trainer's
    multiprocessing.set_forkserver_preload([lifeline.__name__, __name__])
    return multiprocessing.get_context("forkserver")


def _passthrough(batch: dict[str, Any]) -> dict[str, Any]:
    """Collation already happened in ``__getitems__``; a module-level function so workers can pickle it."""
    return batch


class TorchLoader:
    """Endless iterator of ``{"images": uint8 [n,3,R,R] BGR, "indices": int64 [n], "failed": int}``.

    ``workers=0`` decodes in the calling process (tests, per-core benchmarks). The data position
    (epoch, position) counts only batches handed to the caller, not those prefetched by workers.
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
        pin_memory: bool = False,
        prefetch_factor: int = 4,
        shuffle: bool = True,
        stream: ShardedStream | None = None,
        recrop: np.ndarray | None = None,
    ) -> None:
        self.dataset = JpegBatchDataset(paths, resolution, recrop)
        # ``stream`` replaces the plain shuffle (e.g. pipelines.yaw.UniformYawStream)
        self.stream = stream or ShardedStream(len(self.dataset), rank, world_size, seed, shuffle)
        self.batch_size, self.workers, self.pin_memory = batch_size, workers, pin_memory
        self.prefetch_factor = prefetch_factor
        self.epoch, self.position, self.failed = 0, 0, 0
        self._iterator: Iterator[dict[str, Any]] | None = None

    def _start(self) -> Iterator[dict[str, Any]]:
        sampler = _BatchSampler(self.stream, self.batch_size, self.epoch, self.position)
        extra: dict[str, Any] = {}
        if self.workers > 0:
            extra = {
                "multiprocessing_context": _worker_context(),
                "persistent_workers": True,
                "prefetch_factor": self.prefetch_factor,
                "worker_init_fn": functools.partial(_init_worker, trainer_pid=os.getpid()),
            }
        loader = DataLoader(
            self.dataset,  # type: ignore[arg-type]
            batch_sampler=sampler,
            num_workers=self.workers,
            collate_fn=_passthrough,
            pin_memory=self.pin_memory,
            **extra,
        )
        return iter(loader)

    def __iter__(self) -> TorchLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self.epoch, self.position = self.stream.advance(self.epoch, self.position, self.batch_size)
        self.failed += int(batch["failed"])
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the next batch starts: enough to resume the identical stream."""
        return {"epoch": self.epoch, "position": self.position, "failed": self.failed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.failed = int(state.get("failed", 0))

    def close(self) -> None:
        """Stop the worker processes now (a fresh iterator starts on the next ``next``)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # not left to the garbage collector
        if shutdown is not None:
            shutdown()
