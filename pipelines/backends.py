"""The backend table and the one function that decides which backend a run uses.

Why one place: the backend a user asks for (``data.backend``, ``--backend``) and the one that runs can
differ — ``auto`` picks DALI only on a CUDA device with DALI installed, and DALI cannot serve uniform
yaw sampling or faces that need re-cropping. :func:`choose_backend` makes every such decision and
announces each fallback in one line (a ``UserWarning``); nothing else chooses a backend.

What the file backends guarantee (docs/INTERFACES.md, "Backends"): both read the same files of the
same side index, return the same contract (uint8 BGR [n,3,R,R] + int64 sample indices; masks come
from the index, never from the loader), shard by rank, are endless and resume exactly from their
``state_dict``. They differ in sample order (each has its own seeded shuffle) and in decode path
(DataLoader: simplejpeg DCT-scaled decode to about R, then resize; DALI: full-size nvJPEG or
libjpeg-turbo decode, then resize), so pixels can differ by interpolation rounding and a run is not
bit-identical across backends; and in failure handling (the DataLoader replaces a file that fails to
decode and counts it, DALI raises).

This module imports no torch at import time (``config`` reads the table).
"""

from __future__ import annotations

import warnings
from typing import Any

from torchsae.errors import TorchSAEError

# name -> what it is; the order is the CLI's
BACKENDS: dict[str, str] = {
    "auto": "dali on a CUDA device when NVIDIA DALI is installed, else torch",
    "dali": "NVIDIA DALI: sharded file reader, nvJPEG ('mixed') decode on a GPU or libjpeg-turbo on the "
    "CPU, full-size decode then resize",
    "torch": "torch DataLoader workers: simplejpeg DCT-scaled decode, re-crops other face types, uniform yaw",
    "synthetic": "random batches held in device memory, no files: the model and trainer alone",
}
BACKEND_NAMES = tuple(BACKENDS)
LOADER_BACKENDS = ("auto", "dali", "torch")  # the ones that read files (pipelines.make_loader)


def check_backend(name: str, allowed: tuple[str, ...] = BACKEND_NAMES) -> str:
    """``name`` if it is one of ``allowed``, else a TorchSAEError naming them."""
    if name not in allowed:
        raise TorchSAEError(f"backend {name!r}: must be one of {', '.join(allowed)}")
    return name


def choose_backend(
    requested: str,
    device: Any,
    *,
    uniform_yaw: bool = False,
    recrop_source: str | None = None,
) -> str:
    """The backend that runs for ``requested`` on ``device``: ``torch``, ``dali`` or ``synthetic``.

    DALI is chosen for ``dali``, and for ``auto`` on a CUDA device, unless one of these sends the run
    to the DataLoader (``torch``) backend, which is then announced in one line: uniform yaw sampling
    (DALI's file reader takes no sampler); faces of another face type than the model's
    (``recrop_source`` names the faceset: DALI only resizes); ``auto`` without DALI installed. An
    explicit ``dali`` without DALI installed is not a fallback: the DALI loader raises.
    """
    check_backend(requested)
    if requested == "synthetic":
        return requested
    import torch

    from pipelines.dali_loader import dali_available

    if requested == "torch" or (requested == "auto" and torch.device(device).type != "cuda"):
        return "torch"
    if uniform_yaw:
        reason = "uniform yaw sampling uses the DataLoader backend, not DALI"
    elif recrop_source is not None:
        reason = (
            f"{recrop_source}: faces of another face type than the model's are re-cropped by the "
            "DataLoader backend, not DALI"
        )
    elif requested == "auto" and not dali_available():
        reason = "NVIDIA DALI is not installed (pip install 'torchsae[dali]'), so the DataLoader backend runs"
    else:
        return "dali"
    warnings.warn(f"backend {requested} -> torch: {reason}", stacklevel=3)
    return "torch"
