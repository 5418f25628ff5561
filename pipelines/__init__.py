"""Everything that turns faceset files into training batches.

``make_loader`` is the one switch between the data backends (the DALI examples' dali-gpu / dali-cpu /
torch pattern): every backend yields ``{"images": uint8 [n,3,R,R] BGR, "indices": int64 [n], "failed":
int}`` and has ``state_dict`` / ``load_state_dict`` / ``close``. Heavy imports (torch, DALI) happen
inside the functions so ``torchsae index`` starts fast.
"""

from __future__ import annotations

from typing import Any

from torchsae.errors import TorchSAEError

LOADER_BACKENDS = ("auto", "dali", "torch")


def resolve_backend(backend: str, device: Any) -> str:
    """``auto`` -> ``dali`` on a CUDA device when DALI is installed, else ``torch``."""
    import torch

    from pipelines.dali_loader import dali_available

    if backend not in LOADER_BACKENDS:
        raise TorchSAEError(f"backend {backend!r}: must be one of {', '.join(LOADER_BACKENDS)}")
    if backend == "auto":
        return "dali" if torch.device(device).type == "cuda" and dali_available() else "torch"
    return backend


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

    ``uniform_yaw`` samples uniformly over yaw bins (``pipelines.yaw``); DALI's file reader cannot
    take a sampler, so that mode always uses the DataLoader backend (with a warning if DALI was asked).
    Likewise an index whose files need re-cropping to the model's face type (``index.needs_recrop``):
    the DALI pipeline only resizes, so the DataLoader backend re-crops them instead.
    """
    import warnings

    import torch

    backend = resolve_backend(backend, device)
    recrop = getattr(index, "recrop", None) if getattr(index, "needs_recrop", False) else None
    pin = torch.device(device).type == "cuda"
    if uniform_yaw:
        from pipelines.torch_loader import TorchLoader
        from pipelines.yaw import UniformYawStream, index_yaws

        if backend == "dali":
            warnings.warn("uniform yaw sampling uses the DataLoader backend, not DALI", stacklevel=2)
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
    if backend == "dali" and recrop is not None:
        warnings.warn(
            f"{index.root}: faces of another face type than the model's are re-cropped by the "
            "DataLoader backend, not DALI",
            stacklevel=2,
        )
        backend = "torch"
    if backend == "dali":
        from pipelines.dali_loader import DaliLoader

        return DaliLoader(*args, device=device)
    from pipelines.torch_loader import TorchLoader

    return TorchLoader(*args, pin_memory=pin, recrop=recrop)
