"""Everything that turns faceset files into training batches.

``make_loader`` builds the file loader of the backend that ``pipelines.backends.choose_backend``
decides (the backend table and what the backends guarantee live there): every file backend yields
``{"images": uint8 [n,3,R,R] BGR, "indices": int64 [n], "failed": int}`` and has ``state_dict`` / ``load_state_dict`` / ``close``. Heavy imports (torch, DALI) happen
inside the functions so ``torchsae index`` starts fast.
"""

from __future__ import annotations

from typing import Any

from pipelines.backends import LOADER_BACKENDS, check_backend, choose_backend

__all__ = ["LOADER_BACKENDS", "make_loader", "resolve_backend"]


def resolve_backend(backend: str, device: Any) -> str:
    """The file backend ``backend`` (one of LOADER_BACKENDS) runs as on ``device`` (see choose_backend)."""
    return choose_backend(check_backend(backend, LOADER_BACKENDS), device)


def make_loader(
    backend: str,
    index: Any,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    device: Any = "cpu",
    workers: int = 2,
    uniform_yaw: bool = False,
) -> Any:
    """A sharded, endless image loader over ``index`` (a FacesetIndex) for this rank.

    ``uniform_yaw`` samples uniformly over yaw bins (``pipelines.yaw``), and an index whose files
    need re-cropping to the model's face type (``index.needs_recrop``) is re-cropped: both only on the
    DataLoader backend, which ``choose_backend`` then picks (announcing it if DALI was asked for).
    """
    import torch

    recrop = getattr(index, "recrop", None) if getattr(index, "needs_recrop", False) else None
    backend = choose_backend(
        check_backend(backend, LOADER_BACKENDS),
        device,
        uniform_yaw=uniform_yaw,
        recrop_source=str(index.root) if recrop is not None else None,
    )
    pin = torch.device(device).type == "cuda"
    if uniform_yaw:
        from pipelines.torch_loader import TorchLoader
        from pipelines.yaw import UniformYawStream, index_yaws

        stream = UniformYawStream(index_yaws(index), rank, world_size, seed)
        return TorchLoader(
            index.paths,
            index.resolution,
            batch_size,
            workers=workers,
            pin_memory=pin,
            stream=stream,
            recrop=recrop,
        )
    args = (index.paths, index.resolution, batch_size, rank, world_size, seed, workers)
    if backend == "dali":
        from pipelines.dali_loader import DaliLoader

        return DaliLoader(*args, device=device)
    from pipelines.torch_loader import TorchLoader

    return TorchLoader(*args, pin_memory=pin, recrop=recrop)
