"""Exception types shared by every part of TorchSAE.

Every error a user can trigger with bad input derives from :class:`TorchSAEError`, so the command line
can print it as one line (``error: <file>: <what is wrong>``) instead of a traceback.
"""

from __future__ import annotations


class TorchSAEError(Exception):
    """Base class for errors caused by input, configuration or environment (not by bugs)."""


class ConfigError(TorchSAEError, ValueError):
    """A configuration value is invalid or contradicts another one."""
