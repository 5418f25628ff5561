"""Errors raised by the export tools; all are TorchSAEErrors so the CLI prints them as one line."""

from __future__ import annotations

from torchsae.errors import TorchSAEError


class ExportError(TorchSAEError):
    """An export could not be produced (bad checkpoint, size mismatch, exporter failure)."""


class VerificationError(ExportError):
    """An exported graph or engine disagrees with its reference beyond the stated tolerance."""


class DfmContractError(ExportError):
    """An ONNX file breaks one of DeepFaceLive's loading rules for ``.dfm`` models (spec §6)."""


class TensorRTUnavailableError(ExportError):
    """TensorRT or a CUDA GPU is missing; ``build-engine`` exits with code 2 on this error."""
