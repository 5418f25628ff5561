"""The module bank: a folder of named, trained parts (``encoder``, ``adapter``, ``decoder`` per identity).

Layout: ``BANK/<identity>/<kind>.pth``, one self-describing file per part (no separate index to keep
in step): ``{"format": "torchsae-bank-part", "version", "kind", "identity", "latent" (the
LatentSpec's dict: what an encoder/adapter produces, what a decoder consumes), "model" (the DF
ModelConfig the part was built from), "adapter_hidden", "meta" (steps, source run, teacher/anchor,
...), "state_dict"}``. Written atomically (``torchsae.fileio``), read with ``torch.load(weights_only=
True)``; a missing or unreadable part is one line naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchsae.config import Config, ModelConfig
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_write_bytes
from torchsae.modular.latent import LatentSpec, valid_name
from torchsae.modular.parts import KINDS, Adapter, build_part

PART_FORMAT = "torchsae-bank-part"
PART_VERSION = 1


class BankError(TorchSAEError):
    """A bank part is missing, unreadable or not a bank part; the message names the file."""


@dataclass(frozen=True)
class PartInfo:
    """One part of a bank as ``list()`` reports it (no weights loaded)."""

    identity: str
    kind: str
    latent: LatentSpec
    meta: dict[str, Any]
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "kind": self.kind,
            "latent": self.latent.id,
            "meta": self.meta,
            "path": str(self.path),
        }


def check_identity(identity: str) -> str:
    """An identity name usable as a folder and a latent space name."""
    if not valid_name(identity):
        raise BankError(f"identity {identity!r}: use letters, digits, '.', '_' or '-'")
    return identity


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BankError(f"part kind {kind!r}: must be one of {', '.join(KINDS)}")
    return kind


class ModuleBank:
    """A bank folder; parts are written and read one file each."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, kind: str, identity: str) -> Path:
        return self.folder / check_identity(identity) / f"{_check_kind(kind)}.pth"

    def has(self, kind: str, identity: str) -> bool:
        return self.path(kind, identity).is_file()

    def save_part(
        self,
        kind: str,
        identity: str,
        module: nn.Module,
        spec: LatentSpec,
        meta: dict[str, Any] | None = None,
        model_cfg: ModelConfig | None = None,
    ) -> Path:
        """Write ``module`` (its state dict, on the CPU) as ``identity``'s ``kind`` with its latent spec.

        ``model_cfg``: the DF ModelConfig the part was built from (required for encoders and decoders,
        whose shape it gives; an adapter records its channels itself)."""
        path = self.path(kind, identity)
        if kind != "adapter" and model_cfg is None:
            raise BankError(f"{path}: an {kind} part needs the model config it was built from")
        state = {
            "format": PART_FORMAT,
            "version": PART_VERSION,
            "kind": kind,
            "identity": identity,
            "latent": spec.to_dict(),
            "model": model_cfg_dict(model_cfg) if model_cfg is not None else None,
            "adapter_hidden": module.hidden if isinstance(module, Adapter) else None,
            "adapter_channels": module.channels if isinstance(module, Adapter) else None,
            "meta": dict(meta or {}),
            "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def _read(self, kind: str, identity: str) -> tuple[dict[str, Any], Path]:
        path = self.path(kind, identity)
        if not path.is_file():
            known = ", ".join(f"{p.identity}/{p.kind}" for p in self.list()) or "none"
            raise BankError(
                f"{path}: no {kind} of identity {identity!r} in bank {self.folder} (it has: {known})"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (truncated, not a torch file, unsafe pickle: one line)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BankError(f"{path}: not a readable bank part ({first})") from exc
        if not isinstance(state, dict) or state.get("format") != PART_FORMAT:
            raise BankError(f"{path}: not a TorchSAE bank part")
        if int(state.get("version", 0)) > PART_VERSION:
            raise BankError(
                f"{path}: bank part version {state.get('version')} is newer than this TorchSAE reads"
            )
        if state.get("kind") != kind or state.get("identity") != identity:
            raise BankError(
                f"{path}: holds {state.get('identity')!r}'s {state.get('kind')}, not {identity!r}'s {kind}"
            )
        return state, path

    def load_part(self, kind: str, identity: str) -> tuple[nn.Module, LatentSpec, dict[str, Any]]:
        """``(module, latent spec, meta)`` of ``identity``'s ``kind``; the module on the CPU, in train mode."""
        state, path = self._read(kind, identity)
        spec = LatentSpec.from_dict(state["latent"], str(path))
        try:
            if kind == "adapter":
                module: nn.Module = Adapter(int(state["adapter_channels"]), state.get("adapter_hidden"))
            else:
                module = build_part(kind, self.model_config(kind, identity, state))
            module.load_state_dict(state["state_dict"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BankError(f"{path}: weights do not fit the part they declare ({first})") from exc
        return module, spec, dict(state.get("meta") or {})

    def model_config(self, kind: str, identity: str, state: dict[str, Any] | None = None) -> ModelConfig:
        """The DF ModelConfig an encoder or decoder part was built from."""
        if state is None:
            state, path = self._read(kind, identity)
        else:
            path = self.path(kind, identity)
        if not state.get("model"):
            raise BankError(f"{path}: records no model config")
        try:
            model_cfg = Config.from_dict({"model": state["model"]}).model
            model_cfg.validate()
            return model_cfg
        except TorchSAEError as exc:
            raise BankError(f"{path}: {exc}") from exc

    def spec(self, kind: str, identity: str) -> LatentSpec:
        """The latent spec of one part (reads the file, builds no module)."""
        state, path = self._read(kind, identity)
        return LatentSpec.from_dict(state["latent"], str(path))

    def list(self) -> list[PartInfo]:
        """Every readable part, by identity then kind (``encoder``, ``adapter``, ``decoder``)."""
        parts: list[PartInfo] = []
        if not self.folder.is_dir():
            return parts
        for folder in sorted(p for p in self.folder.iterdir() if p.is_dir()):
            for kind in KINDS:
                path = folder / f"{kind}.pth"
                if not path.is_file() or not valid_name(folder.name):
                    continue
                state, _ = self._read(kind, folder.name)
                spec = LatentSpec.from_dict(state["latent"], str(path))
                parts.append(PartInfo(folder.name, kind, spec, dict(state.get("meta") or {}), path))
        return parts


def model_cfg_dict(model_cfg: ModelConfig) -> dict[str, Any]:
    """Plain values of a ModelConfig (what a part file records)."""
    from dataclasses import asdict

    return asdict(model_cfg)
