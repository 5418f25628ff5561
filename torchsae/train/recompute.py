"""Activation recompute of the model's blocks: recompute them in backward instead of keeping them.

Naming: "recompute" is what PyTorch calls activation checkpointing (``torch.utils.checkpoint``);
TorchSAE keeps the word "checkpoint" for saved training state (``torchsae.train.checkpoint``).

Why per block: most of a step's activation memory sits in the decoders' high-resolution upscale and
residual blocks; wrapping each in ``torch.utils.checkpoint`` (non-reentrant) keeps only its input and
recomputes the rest during backward, at the price of running those blocks' forward twice. The
memory planner (``torchsae.train.memory``) turns this on only when the budget needs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchsae.errors import ConfigError
from torchsae.models.layers import Downscale, ResidualBlock, Upscale

RECOMPUTE_MODES = ("none", "decoder", "all")


def recompute_targets(model: nn.Module, mode: str) -> list[nn.Module]:
    """The blocks ``mode`` recomputes in backward: decoder Upscale/ResidualBlocks, or every block.

    ``decoder`` covers the decoders' upscale, residual and mask-upscale blocks (most of the activation
    memory at high resolution); ``all`` adds the encoder's downscale/residual blocks and the inters'
    upscale. Dense layers are never recomputed (their activations are small).
    """
    if mode not in RECOMPUTE_MODES:
        raise ConfigError(f"recompute {mode!r}: must be one of {', '.join(RECOMPUTE_MODES)}")
    if mode == "none":
        return []
    kinds = (Upscale, ResidualBlock, Downscale)
    targets = []
    for name, module in model.named_modules():
        top = name.split(".", 1)[0]
        if not isinstance(module, kinds):
            continue
        if top.startswith("decoder") or mode == "all":
            targets.append(module)
    return targets


def _recomputed(runner: Callable[..., Any], forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # previews, export: nothing to save, nothing to recompute
        return forward(*args, **kwargs)
    return runner(forward, *args, **kwargs)


def _torch_recompute(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_recompute(model: nn.Module, mode: str, runner: Callable[..., Any] | None = None) -> int:
    """Recompute ``mode``'s blocks in backward instead of keeping their activations; returns the count.

    Each block's ``forward`` is wrapped on the instance (weights, names and state_dict unchanged) with
    ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``, which keeps only the block's inputs.
    """
    runner = runner or _torch_recompute
    targets = recompute_targets(model, mode)
    for module in targets:
        module.forward = functools.partial(_recomputed, runner, module.forward)
    return len(targets)
