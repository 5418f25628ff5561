"""Hybrid with SAEHD: a fresh DF SAEHD run whose parts start from module-bank parts.

``torchsae train ... --init-from-bank BANK [--init-encoder X] [--init-a A] [--init-b B]``: on a fresh
start (never on resume) ``encoder``/``inter`` are copied from X's bank encoder part (default: A's),
``decoder_a`` from A's decoder, ``decoder_b`` from B's; the parts not named keep SAEHD's own
initialisation. SAEHD's two decoders share one inter, so every copied decoder must consume the latent
the copied (or, without one, A's) encoder produces (``check_compatible``), and the parts' shapes must
be the run's (one line naming the part's file otherwise). Each copied part is stated in the start
summary; everything else (resume, DDP, AMP, previews, export) is the SAEHD run's, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from torchsae.config import Config
from torchsae.modular.bank import BankError, ModuleBank
from torchsae.modular.latent import check_compatible
from torchsae.modular.parts import check_df


@dataclass(frozen=True)
class HybridInit:
    """Which bank parts initialise which SAEHD parts (None: not copied)."""

    bank: str
    encoder: str | None = None  # X: encoder + inter
    decoder_a: str | None = None
    decoder_b: str | None = None

    @classmethod
    def from_options(cls, bank: str, encoder: str | None, a: str | None, b: str | None) -> HybridInit:
        """The CLI's choice: the encoder defaults to A's (then B's) when not named."""
        if not (encoder or a or b):
            raise BankError(f"{bank}: --init-from-bank needs --init-encoder, --init-a or --init-b")
        return cls(bank, encoder or a or b, a, b)

    def plan(self) -> dict[str, str]:
        """SAEHD part -> the bank identity it is copied from."""
        plan = {
            "encoder": self.encoder,
            "inter": self.encoder,
            "decoder_a": self.decoder_a,
            "decoder_b": self.decoder_b,
        }
        return {part: who for part, who in plan.items() if who}


def apply_hybrid_init(model: torch.nn.Module, init: HybridInit) -> list[str]:
    """Copy the named bank parts into a DF SAEHD ``model`` in place; the start summary's lines."""
    check_df(model.config, "--init-from-bank")
    bank = ModuleBank(init.bank)
    produced = bank.spec("encoder", init.encoder) if init.encoder else None
    lines: list[str] = []
    with torch.no_grad():
        if init.encoder:
            enc, spec, meta = bank.load_part("encoder", init.encoder)
            _copy(model.encoder, enc.encoder, bank.path("encoder", init.encoder))
            _copy(model.inter, enc.inter, bank.path("encoder", init.encoder))
            lines.append(_line("encoder", f"{init.encoder}'s encoder", spec.id, meta))
            lines.append(_line("inter", f"{init.encoder}'s encoder (inter)", spec.id, meta))
        for part, who in (("decoder_a", init.decoder_a), ("decoder_b", init.decoder_b)):
            if not who:
                continue
            dec, spec, meta = bank.load_part("decoder", who)
            if produced is not None:
                check_compatible(produced, spec, f"{init.encoder}'s encoder", f"{who}'s decoder ({part})")
            _copy(getattr(model, part), dec, bank.path("decoder", who))
            lines.append(_line(part, f"{who}'s decoder", spec.id, meta))
    kept = [p for p in ("encoder", "inter", "decoder_a", "decoder_b") if p not in init.plan()]
    if kept:
        lines.append(f"{'init':<12} {', '.join(kept)}: SAEHD's own initialisation")
    return lines


def _line(part: str, source: str, latent: str, meta: dict) -> str:
    return f"{'init':<12} {part} <- {source} (latent {latent}, {meta.get('steps', '?')} steps)"


def _copy(target: torch.nn.Module, source: torch.nn.Module, path: object) -> None:
    try:
        target.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BankError(f"{path}: does not fit this run's model ({first})") from exc


def hybrid_task_factory(init: HybridInit) -> Callable[[Config, str, torch.device], object]:
    """SAEHD's task with the named parts copied in after it is built (fresh runs only: the CLI uses this
    factory only when no checkpoint is resumed)."""
    from torchsae.train.saehd_task import SAEHDTask

    def build(config: Config, recompute: str, device: torch.device) -> SAEHDTask:
        task = SAEHDTask(config, recompute, device)
        task.start_notes = apply_hybrid_init(task.model, init)
        return task

    return build
