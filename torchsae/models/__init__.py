"""SAEHD networks as pure ``nn.Module`` code (no I/O): layers, archi, the model, discriminators.

``torchsae.models.registry`` (``build_model``, ``model_family``) imports no torch; the names below are
loaded on first use, so importing the registry (as ``config`` does) does not import torch either.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SAEHD": "torchsae.models.saehd",
    "CodeDiscriminator": "torchsae.models.discriminators",
    "UNetPatchDiscriminator": "torchsae.models.discriminators",
    "count_parameters": "torchsae.models.counts",
    "param_counts": "torchsae.models.counts",
    "build_model": "torchsae.models.registry",
    "model_family": "torchsae.models.registry",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
