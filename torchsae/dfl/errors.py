"""Errors raised while reading or writing DeepFaceLab files.

Both derive from :class:`torchsae.errors.TorchSAEError`, so the command line prints them as one line
naming the file; callers that scan a faceset catch :class:`DFLFormatError` to report a bad file and
carry on with the rest.
"""

from __future__ import annotations

from torchsae.errors import TorchSAEError


class DFLFormatError(TorchSAEError):
    """A file is not a usable DeepFaceLab JPEG: not a JPEG, truncated, a bad segment, bad metadata,
    or a metadata payload too large for one JPEG segment."""


class UnsafePickleError(DFLFormatError):
    """A metadata pickle asked for a global (or persistent id) outside the allow-list.

    Raised before anything the pickle names is called, so a hostile file never runs code.
    """


class DFLExportError(TorchSAEError):
    """A TorchSAE model cannot be written as a DeepFaceLab model folder (a setting DeepFaceLab cannot
    express, files already there, a checkpoint that does not fit)."""
