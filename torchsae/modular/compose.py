"""Combine bank parts: Encoder_X [+ Adapter_X] + Decoder_Y converts X's faces to Y.

``composed_swap(bank, encoder=X, decoder=Y, adapter=None)`` -> :class:`ComposedSwap` (an ``nn.Module``
with SAEHD's ``swap`` interface; any chain of parts, adapter included: what the ONNX compose exports).
``compose_checkpoint(bank, X, Y, output)`` writes a DF SAEHD checkpoint ``torchsae export``,
``torchsae swap`` and ``torchsae train --resume`` read: ``encoder``/``inter`` = X's encoder part,
``decoder_b`` = Y's decoder (the swap), ``decoder_a`` = X's decoder (A's own face mask) when X has one
of the same latent and shape, else Y's. An SAEHD checkpoint has no adapter slot, so an adapter chain
is refused there (compose it to ONNX). Every junction is checked with ``check_compatible``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from torchsae.config import Config, ModelConfig
from torchsae.modular.bank import BankError, ModuleBank
from torchsae.modular.latent import LatentSpec, check_compatible


class ComposedSwap(nn.Module):
    """Encoder_X -> [Adapter_X] -> Decoder_Y; ``swap(face) -> (swapped, swapped_mask, face_mask)``
    (``face_mask`` from ``face_decoder``, X's own decoder when given, else Decoder_Y's mask)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        adapter: nn.Module | None = None,
        face_decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder_part, self.decoder_part = encoder, decoder
        self.adapter = adapter
        self.face_decoder = face_decoder

    def code(self, face: torch.Tensor) -> torch.Tensor:
        code = self.encoder_part(face)
        return code if self.adapter is None else self.adapter(code)

    def swap(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw = self.encoder_part(face)
        code = raw if self.adapter is None else self.adapter(raw)
        swapped, swapped_mask = self.decoder_part(code)
        face_mask = swapped_mask if self.face_decoder is None else self.face_decoder.forward_mask(raw)
        return swapped, swapped_mask, face_mask

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.swap(face)


def chain_spec(bank: ModuleBank, encoder: str, decoder: str, adapter: str | None = None) -> LatentSpec:
    """Check the chain's junctions; the latent the decoder consumes."""
    produced = bank.spec("encoder", encoder)
    producer = f"{encoder}'s encoder"
    if adapter is not None:
        consumed = _adapter_input(bank, adapter)
        check_compatible(produced, consumed, producer, f"{adapter}'s adapter")
        produced, producer = bank.spec("adapter", adapter), f"{adapter}'s adapter"
    consumed = bank.spec("decoder", decoder)
    check_compatible(produced, consumed, producer, f"{decoder}'s decoder")
    return consumed


def _adapter_input(bank: ModuleBank, identity: str) -> LatentSpec:
    """The latent an adapter consumes (recorded in its meta as ``input_latent``)."""
    _, _, meta = bank.load_part("adapter", identity)
    if "input_latent" not in meta:
        raise BankError(f"{bank.path('adapter', identity)}: records no input latent")
    return LatentSpec.from_dict(meta["input_latent"], str(bank.path("adapter", identity)))


def composed_swap(bank: ModuleBank, encoder: str, decoder: str, adapter: str | None = None) -> ComposedSwap:
    """The checked chain as one module (eval mode, CPU)."""
    chain_spec(bank, encoder, decoder, adapter)
    enc, _, _ = bank.load_part("encoder", encoder)
    dec, _, _ = bank.load_part("decoder", decoder)
    ada = bank.load_part("adapter", adapter)[0] if adapter is not None else None
    face_decoder = _face_decoder(bank, encoder)
    return ComposedSwap(enc, dec, ada, face_decoder).eval()


def _face_decoder(bank: ModuleBank, identity: str) -> nn.Module | None:
    """X's own decoder when it consumes what X's encoder produces (A's face mask), else None."""
    if not bank.has("decoder", identity):
        return None
    if bank.spec("decoder", identity) != bank.spec("encoder", identity):
        return None
    return bank.load_part("decoder", identity)[0]


def _same_decoder_shape(a: ModelConfig, b: ModelConfig) -> bool:
    keys = ("archi", "resolution", "ae_dims", "d_dims", "d_mask_dims", "lowest_dense_res")
    return all(getattr(a, k, None) == getattr(b, k, None) for k in keys)


def compose_model_config(bank: ModuleBank, encoder: str, decoder: str) -> ModelConfig:
    """One DF ModelConfig describing encoder X's and decoder Y's shapes (refused when they cannot be)."""
    enc_cfg = bank.model_config("encoder", encoder)
    dec_cfg = bank.model_config("decoder", decoder)
    merged = ModelConfig(**{**asdict(enc_cfg), "d_dims": dec_cfg.d_dims, "d_mask_dims": dec_cfg.d_mask_dims})
    if merged.archi != dec_cfg.archi:
        raise BankError(
            f"{bank.path('decoder', decoder)}: archi {dec_cfg.archi!r} differs from {encoder}'s encoder "
            f"({enc_cfg.archi!r}); one SAEHD checkpoint cannot hold both (compose to ONNX instead)"
        )
    merged.validate()
    return merged


def compose_checkpoint(
    bank: ModuleBank,
    encoder: str,
    decoder: str,
    output: str | Path,
    adapter: str | None = None,
    base: Config | None = None,
) -> Path:
    """Write X's encoder + Y's decoder as a DF SAEHD checkpoint at ``output`` (step 0, no optimiser)."""
    from torchsae.models.registry import build_model
    from torchsae.train.checkpoint import TrainingCheckpoint, write_checkpoint

    if adapter is not None:
        raise BankError(
            f"{bank.path('adapter', adapter)}: an SAEHD checkpoint has no adapter slot; compose the "
            "adapter chain to ONNX (torchsae bank compose ... --output FILE.onnx)"
        )
    chain_spec(bank, encoder, decoder)
    model_cfg = compose_model_config(bank, encoder, decoder)
    model = build_model(model_cfg)
    enc, _, _ = bank.load_part("encoder", encoder)
    dec_b, _, _ = bank.load_part("decoder", decoder)
    face_decoder = _face_decoder(bank, encoder)
    if face_decoder is not None and not _same_decoder_shape(bank.model_config("decoder", encoder), model_cfg):
        face_decoder = None
    try:
        model.encoder.load_state_dict(enc.encoder.state_dict())
        model.inter.load_state_dict(enc.inter.state_dict())
        model.decoder_b.load_state_dict(dec_b.state_dict())
        model.decoder_a.load_state_dict((face_decoder or dec_b).state_dict())
    except RuntimeError as exc:
        raise BankError(
            f"{bank.folder}: parts do not fit one SAEHD model ({str(exc).splitlines()[0]})"
        ) from exc
    config = Config.from_dict((base or Config()).to_dict())
    config.model = model_cfg
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = TrainingCheckpoint(
        step=0,
        config=config.to_dict(),
        model=model.state_dict(),
        metrics={  # a fresh run's metrics (a resume reads them), plus where the parts came from
            "skipped_steps": 0,
            "history": {"loss_a": [], "loss_b": []},
            "composed": {
                "bank": str(bank.folder),
                "encoder": encoder,
                "decoder": decoder,
                "decoder_a": encoder if face_decoder is not None else decoder,
            },
        },
    )
    write_checkpoint(output, checkpoint)
    return output
