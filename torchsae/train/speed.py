"""Training-speed switches: TF32 on Ampere+, channels_last, and ``torch.compile`` with an eager fallback.

Why each one:

* **TF32** (compute capability 8.0+): fp32 matmuls and convolutions on tensor cores with a 10-bit
  mantissa, several times faster; SAEHD trains in fp32 unless ``--amp`` is given, and DeepFaceLab's
  own TF1 graphs ran with TF32 on by default on Ampere. Off on the CPU and on older GPUs (no effect).
* **channels_last** on CUDA: cuDNN's tensor-core convolution kernels are NHWC; NCHW weights and
  activations cost a transpose per convolution. The model's maths does not change (memory format
  only); ``depth_to_space`` and the flatten reshape by logical index, so they stay exact.
* **torch.compile**: fuses SAEHD's many small elementwise ops (leaky ReLU, depth-to-space, pixel
  norm) into the convolutions' neighbours. Compilation can fail on some platforms (no compiler, an
  unsupported op); :class:`CompiledOrEager` then warns once and trains in eager mode instead of
  stopping the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def enable_tf32(device: torch.device) -> bool:
    """Allow TF32 matmuls/convolutions on an Ampere-or-newer GPU; returns whether it was enabled."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels
    return True


def use_channels_last(module: nn.Module, device: torch.device) -> bool:
    """Put ``module``'s 4-D weights in channels_last on CUDA (in place); returns whether it did."""
    if device.type != "cuda":
        return False
    module.to(memory_format=torch.channels_last)
    return True


class CompiledOrEager:
    """Call ``torch.compile(module)``; if compiling or running the compiled code raises, warn once and
    call the eager module from then on (the run goes on, only slower).

    The eager retry recomputes the failed call, so a failure costs nothing but time. Errors the eager
    module raises too (bad inputs, out of memory) still propagate.
    """

    def __init__(self, module: nn.Module, compile_fn: Callable[[nn.Module], Any] | None = None) -> None:
        self.module = module
        self.failed: str | None = None
        try:
            self._compiled = (compile_fn or torch.compile)(module)
        except Exception as exc:  # noqa: BLE001 - any compiler error means "use eager"
            self._fallback(exc)

    def _fallback(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self.failed = f"{type(exc).__name__}: {first}"
        self._compiled = None
        warnings.warn(f"torch.compile failed ({self.failed}); training continues in eager mode", stacklevel=3)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - dynamo/inductor raise many types
                self._fallback(exc)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # ``no_sync`` and friends of a wrapped DDP module
        if name in ("module", "failed", "_compiled"):
            raise AttributeError(name)
        return getattr(self.module, name)


def maybe_compile(module: nn.Module, enabled: bool) -> Callable[..., Any]:
    """``module`` itself, or a :class:`CompiledOrEager` around it when ``enabled``."""
    return CompiledOrEager(module) if enabled else module
