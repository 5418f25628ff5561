"""Which autocast dtype and whether a GradScaler: ``--amp`` resolved for the training device.

bf16 has fp32's exponent range, so it needs no loss scaling; fp16 does (a GradScaler). A bare
``--amp`` (``auto``) picks bf16 wherever the device supports it: CPUs (autocast on the CPU runs in
bf16) and CUDA GPUs from Ampere on; older GPUs fall back to fp16 with a scaler.
"""

from __future__ import annotations

import torch

from torchsae.errors import ConfigError


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for ``train.amp`` on ``device``."""
    if mode == "none":
        return None, False
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if mode == "auto":
        if device.type == "cuda" and not cuda_bf16:
            return torch.float16, True
        return torch.bfloat16, False
    if mode == "bf16":
        if device.type == "cuda" and not cuda_bf16:
            raise ConfigError(
                f"train.amp bf16: {torch.cuda.get_device_name(device)} has no bf16; use --amp fp16"
            )
        return torch.bfloat16, False
    if mode == "fp16":
        return torch.float16, True
    raise ConfigError(f"train.amp {mode!r}: must be none, auto, bf16 or fp16")
