"""DeepFaceLab (TensorFlow layout) weights <-> TorchSAE state_dict: key names and kernel transposes.

Pure conversion, no file I/O: the DeepFaceLab importer reads and unpickles the files, this module turns
``{'down1/downs_0/conv1/weight:0': ndarray}`` into ``{'down1.downs.0.conv1.weight': Tensor}`` and back.

Layouts: TF conv kernels are (kh, kw, in, out) -> torch (out, in, kh, kw); TF dense kernels
(in, out) -> torch (out, in); TF Conv2DTranspose kernels (kh, kw, out, in) -> torch (in, out, kh, kw);
biases are the same. The first two need the same permutation (TF's last axis becomes torch's first),
and neither framework flips a transposed kernel (both are the adjoint of a cross-correlation), so one
rule covers all three. Flatten order and dense reshape are already C, H, W on both sides (spec §2.1), so
nothing else is reordered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from torchsae.errors import TorchSAEError

_LIST_ITEM = re.compile(r"^(.+)_(\d+)$")


class WeightLayoutError(TorchSAEError):
    """DeepFaceLab weights do not fit the network they are loaded into (missing, extra or misshapen)."""


def tf_key_to_torch(key: str) -> str:
    """``'down1/downs_0/conv1/weight:0'`` -> ``'down1.downs.0.conv1.weight'``.

    A path part ending in ``_<digits>`` is an item of a DeepFaceLab layer list (``downs_0``,
    ``convs_2``); names like ``out_conv1`` or ``upscale0`` have no underscore before the digits.
    """
    key = key.split(":", 1)[0]
    parts = []
    for part in key.split("/"):
        match = _LIST_ITEM.match(part)
        parts.extend(match.groups() if match else (part,))
    return ".".join(parts)


def torch_key_to_tf(key: str) -> str:
    """Inverse of :func:`tf_key_to_torch` (adds the ``:0`` tensor suffix)."""
    parts: list[str] = []
    for part in key.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    return "/".join(parts) + ":0"


def tf_array_to_torch(array: np.ndarray) -> torch.Tensor:
    """One TF-layout weight -> a contiguous torch tensor in PyTorch layout (see the module doc)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim == 4:
        tensor = tensor.permute(3, 2, 0, 1)
    elif tensor.ndim == 2:
        tensor = tensor.t()
    return tensor.contiguous()


def tf_shape(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The TF-layout shape of a weight with this PyTorch-layout shape."""
    if len(torch_shape) == 4:
        return (torch_shape[2], torch_shape[3], torch_shape[1], torch_shape[0])
    if len(torch_shape) == 2:
        return (torch_shape[1], torch_shape[0])
    return tuple(torch_shape)


def torch_tensor_to_tf(tensor: torch.Tensor) -> np.ndarray:
    """One PyTorch-layout weight -> a TF-layout float array (inverse of :func:`tf_array_to_torch`)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    if tensor.ndim == 4:
        tensor = tensor.permute(2, 3, 1, 0)
    elif tensor.ndim == 2:
        tensor = tensor.t()
    return np.ascontiguousarray(tensor.numpy())


def tf_to_state_dict(tf_weights: Mapping[str, np.ndarray], module: nn.Module, source: str) -> dict:
    """Convert one DeepFaceLab net's weights into a complete state_dict for ``module``.

    Every parameter of ``module`` must be present with the matching shape and no extra key may be
    left over; otherwise WeightLayoutError names ``source`` (the file) and the offending keys. This is
    what catches an archi or dims mismatch between a DeepFaceLab model and the TorchSAE config.
    """
    expected = module.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for tf_key, array in tf_weights.items():
        key = tf_key_to_torch(tf_key)
        if key not in expected:
            raise WeightLayoutError(f"{source}: unexpected weight {tf_key!r} (no {key!r} in the network)")
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise WeightLayoutError(f"{source}: weight {tf_key!r} is not a float array")
        tensor = tf_array_to_torch(array)
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise WeightLayoutError(
                f"{source}: weight {tf_key!r} has shape {array.shape}, the network needs "
                f"{tf_shape(tuple(expected[key].shape))} (check archi and dims)"
            )
        converted[key] = tensor.to(expected[key].dtype)
    missing = [torch_key_to_tf(k) for k in expected if k not in converted]
    if missing:
        raise WeightLayoutError(
            f"{source}: missing weight(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    return converted


def state_dict_to_tf(module: nn.Module) -> dict[str, np.ndarray]:
    """``module``'s parameters as a DeepFaceLab-layout dict (TF names, TF kernel layouts), in order."""
    return {torch_key_to_tf(key): torch_tensor_to_tf(value) for key, value in module.state_dict().items()}
