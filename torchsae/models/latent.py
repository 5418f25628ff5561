"""The latent contract of modular models: what an encoder (or adapter) produces and a decoder consumes.

Why a declared spec and not just tensor shapes: two independently trained encoders can produce codes of
the same shape that mean different things. A spec therefore names its *space* (the latent space it lives
in: the identity or teacher whose code defines it) beside the shape, resolution, face type and value
convention, and combining an encoder with a decoder requires the whole spec to agree. DF's code (the
inter's output, channels × size × size) is the natural shared latent; LIAE's concatenated code is not.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from torchsae.errors import TorchSAEError

LATENT_VERSION = 1
VALUE_CONVENTION = "float32, unbounded (DF inter output: conv + depth-to-space, no activation)"
_SPACE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class LatentMismatchError(TorchSAEError):
    """Two parts declare different latents; raised with one line naming both and what differs."""


@dataclass(frozen=True)
class LatentSpec:
    """One latent: ``channels × size × size`` codes of ``resolution``-px ``face_type`` faces in ``space``.

    ``space`` is the latent space's stable name (e.g. the first identity of a bank, whose code the
    others are distilled or adapted into); ``version`` is this contract's version.
    """

    space: str
    channels: int
    size: int
    resolution: int
    face_type: str
    values: str = VALUE_CONVENTION
    version: int = LATENT_VERSION

    def __post_init__(self) -> None:
        if not _SPACE_RE.match(self.space):
            raise LatentMismatchError(f"latent space {self.space!r}: use letters, digits, '.', '_' or '-'")
        for name in ("channels", "size", "resolution"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LatentMismatchError(f"latent {name} {value!r}: must be a positive integer")

    @property
    def id(self) -> str:
        """A stable, readable id: ``space:CxSxS:rR:face_type:vN`` (equal ids <=> compatible parts)."""
        return (
            f"{self.space}:{self.channels}x{self.size}x{self.size}:r{self.resolution}:"
            f"{self.face_type}:v{self.version}"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, size, size) of one code."""
        return (self.channels, self.size, self.size)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (bank metadata, checkpoints loaded weights-only, ONNX metadata as JSON)."""
        return {**asdict(self), "id": self.id}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "latent") -> LatentSpec:
        """The spec ``to_dict`` wrote; a LatentMismatchError naming ``source`` for anything else."""
        fields = {k: data.get(k) for k in ("space", "channels", "size", "resolution", "face_type")}
        missing = [k for k, v in fields.items() if v is None]
        if missing:
            raise LatentMismatchError(f"{source}: latent spec lacks {', '.join(missing)}")
        version = int(data.get("version", LATENT_VERSION))
        if version > LATENT_VERSION:
            raise LatentMismatchError(
                f"{source}: latent spec version {version} is newer than this TorchSAE reads ({LATENT_VERSION})"
            )
        spec = cls(**fields, values=str(data.get("values", VALUE_CONVENTION)), version=version)
        if "id" in data and data["id"] != spec.id:
            raise LatentMismatchError(
                f"{source}: latent id {data['id']!r} does not match its fields ({spec.id})"
            )
        return spec


def check_compatible(produced: LatentSpec, consumed: LatentSpec, producer: str, consumer: str) -> None:
    """Refuse, in one line, to feed ``producer``'s codes to ``consumer`` unless their specs are equal."""
    if produced == consumed:
        return
    differs = [
        f"{name} {getattr(produced, name)!r} vs {getattr(consumed, name)!r}"
        for name in ("space", "channels", "size", "resolution", "face_type", "values", "version")
        if getattr(produced, name) != getattr(consumed, name)
    ]
    raise LatentMismatchError(
        f"{producer} produces latent {produced.id} but {consumer} consumes {consumed.id} ({'; '.join(differs)})"
    )
