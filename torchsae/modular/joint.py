"""Shared encoder, N decoders written into a module bank: joint training's parts beside the modular ones.

``torchsae train-joint --bank BANK --data-dir A=faces/A --data-dir B=faces/B --data-dir C=faces/C``
trains ``torchsae.train.joint_task.JointTask`` and, after every checkpoint, writes for each identity
X ``BANK/X/encoder.pth`` (the shared encoder + inter) and ``BANK/X/decoder.pth`` (X's decoder), all in
one latent space named ``joint-<ids>``; ``torchsae bank compose --encoder X --decoder Y`` then joins any
pair, as for distilled parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from torchsae.config import Config
from torchsae.modular.bank import ModuleBank
from torchsae.modular.parts import EncoderPart, latent_spec
from torchsae.train.joint_task import JointTask


def joint_space(identities: Sequence[str]) -> str:
    """The latent space's name: ``joint-`` and the identities in order (``joint-A-B-C``)."""
    return "joint-" + "-".join(identities)


class JointBankTask(JointTask):
    """``JointTask`` that refreshes its parts in ``bank`` after every checkpoint (``on_saved``)."""

    def __init__(self, config: Config, recompute: str, device: torch.device, identities, bank: str) -> None:
        super().__init__(config, recompute, device, identities)
        self.bank = ModuleBank(bank)
        self.spec = latent_spec(config.model, joint_space(self.identities))

    def on_saved(self, step: int, path: Path | None) -> None:
        model, model_cfg = self.model, self.config.model
        encoder = EncoderPart(model.encoder, model.inter)
        for name in self.identities:
            meta: dict[str, Any] = {
                "mode": "joint",
                "identity": name,
                "identities": list(self.identities),
                "steps": int(step),
                "checkpoint": str(path) if path is not None else None,
                "latent": self.spec.id,
                "train_config": self.config.to_dict(),
            }
            self.bank.save_part("encoder", name, encoder, self.spec, meta, model_cfg)
            self.bank.save_part("decoder", name, model.decoder(name), self.spec, meta, model_cfg)


def joint_bank_task_factory(
    identities: Sequence[tuple[str, str | None]], bank: str
) -> Callable[[Config, str, torch.device], JointBankTask]:
    """What ``train(..., task_factory=)`` takes: the joint task writing its parts into ``bank``."""
    identities = tuple(identities)

    def build(config: Config, recompute: str, device: torch.device) -> JointBankTask:
        return JointBankTask(config, recompute, device, identities, bank)

    return build
