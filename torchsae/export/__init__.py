"""Export: ONNX (``torchsae`` and DeepFaceLive ``.dfm`` layouts) verified with ONNX Runtime, and
TensorRT engines verified against ONNX Runtime.

Importing this package is light: torch and onnx load with the submodules that need them, and
TensorRT only inside ``torchsae.export.tensorrt`` functions.
"""

from __future__ import annotations

from torchsae.export.errors import DfmContractError, ExportError, TensorRTUnavailableError, VerificationError

__all__ = [
    "DfmContractError",
    "ExportError",
    "TensorRTUnavailableError",
    "VerificationError",
]
