"""DeepFaceLab SAEHD model folders: which file holds what, torch-free.

Why its own module: the reader of options (``model_options``), the writer (``model_writer``) and the
converters above the trainer (``torchsae.convert``) all name the same files, optimizer slots and
discriminators; this is the one table of them, and it imports neither torch nor the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.model_options import read_dfl_pickle

G_OPTIMIZER_FILE = "src_dst_opt"


@dataclass(frozen=True)
class Discriminator:
    """One optional DeepFaceLab discriminator: its files, TF scope and TorchSAE trainer name."""

    name: str  # key in the checkpoint's "discriminators" / "optimizers"
    weights_file: str
    optimizer_file: str
    scope: str  # the TF variable scope, which prefixes the optimizer's slot names


DISCRIMINATORS = (
    Discriminator("code", "code_discriminator", "D_code_opt", "dis"),
    Discriminator("gan", "GAN", "GAN_opt", "D_src"),
)
SLOTS = {"adabelief": (("ms_", "exp_avg"), ("vs_", "exp_avg_var")), "rmsprop": (("acc_", "square_avg"),)}


def net_path(folder: Path, name: str, net: str) -> Path:
    """``<folder>/<name>_SAEHD_<net>.npy``: DeepFaceLab's file for one network or optimizer."""
    return folder / f"{name}_SAEHD_{net}.npy"


def read_weight_dict(path: Path) -> dict[str, np.ndarray]:
    """A weight or optimizer pickle: a dict with string keys, checked before any conversion."""
    data = read_dfl_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise DFLFormatError(
            f"{path}: expected a dict of TensorFlow variable names, got {type(data).__name__}"
        )
    for key, value in data.items():  # torch cannot wrap big-endian arrays; numpy converts them
        if isinstance(value, np.ndarray) and not value.dtype.isnative:
            data[key] = value.astype(value.dtype.newbyteorder("="))
    return data


def slot_key(prefix: str, scope: str, tf_key: str) -> str:
    """The optimizer slot name of a weight: ``ms_`` + ``encoder/down1/...weight:0`` -> ``..weight_0:0``."""
    return f"{prefix}{scope}/{tf_key.removesuffix(':0')}_0:0"


def plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """DeepFaceLab options as plain Python values a ``weights_only`` checkpoint can hold (numpy
    scalars -> int/float/bool; anything not a scalar is left out)."""
    out = {}
    for key, value in options.items():
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out
