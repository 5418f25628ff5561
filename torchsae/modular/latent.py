"""The latent contract of modular models, re-exported from :mod:`torchsae.models.latent`.

It lives in the models layer so that ``torchsae.export`` (below ``torchsae.modular``) can read and check
the latent spec a part ONNX file carries; modular code keeps importing it from here.
"""

from __future__ import annotations

from torchsae.models.latent import _SPACE_RE as _NAME_RE
from torchsae.models.latent import (
    LATENT_VERSION,
    VALUE_CONVENTION,
    LatentMismatchError,
    LatentSpec,
    check_compatible,
)


def valid_name(name: object) -> bool:
    """Whether ``name`` can name a latent space (and a bank identity): letters, digits, '.', '_', '-'."""
    return isinstance(name, str) and bool(_NAME_RE.match(name))


__all__ = [
    "LATENT_VERSION",
    "VALUE_CONVENTION",
    "LatentMismatchError",
    "LatentSpec",
    "check_compatible",
    "valid_name",
]
