"""Bank parts -> ONNX: ``torchsae bank compose --output X.onnx|X.dfm`` and ``torchsae bank export-part``.

Why a bridge module: the ONNX part exports and the part-graph join live in the export layer
(``torchsae.export.parts``), which sits below ``torchsae.modular`` and only sees plain modules and a
``LatentSpec``. This module reads the bank, checks the chain and hands the modules over. A part file of
an adapter holds its identity's encoder too (Encoder_X -> Adapter_X: a producer of the adapter's
latent), so `bank join` recombines it with any decoder of that latent.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from torchsae.modular.bank import ModuleBank
from torchsae.modular.compose import _adapter_input, compose_model_config, composed_swap
from torchsae.modular.latent import check_compatible


def _front(bank: ModuleBank, encoder: str, adapter: str | None):
    """(module, latent) of Encoder_X, or of Encoder_X -> Adapter_X."""
    enc, enc_spec, _ = bank.load_part("encoder", encoder)
    if adapter is None:
        return enc.eval(), enc_spec
    ada, ada_spec, _ = bank.load_part("adapter", adapter)
    return nn.Sequential(enc, ada).eval(), ada_spec


def chain_spec_adapter(bank: ModuleBank, identity: str) -> None:
    """Refuse (one line) an adapter that does not consume what its identity's encoder produces."""
    check_compatible(
        bank.spec("encoder", identity),
        _adapter_input(bank, identity),
        f"{identity}'s encoder",
        f"{identity}'s adapter",
    )


def export_part(
    bank: ModuleBank, kind: str, identity: str, output: str | Path, *, opset: int = 17, dtype: str = "fp32"
) -> Path:
    """One bank part as an ONNX part file (an adapter is exported with its encoder: a code producer)."""
    from torchsae.export.parts import export_decoder_onnx, export_encoder_onnx

    meta = {"identity": identity, "bank_part": kind}
    if kind == "decoder":
        module, spec, _ = bank.load_part("decoder", identity)
        export_decoder_onnx(module.eval(), spec, output, opset=opset, dtype=dtype, metadata=meta)
    else:
        adapter = identity if kind == "adapter" else None
        if adapter is not None:  # the adapter must accept this identity's encoder
            chain_spec_adapter(bank, identity)
        module, spec = _front(bank, identity, adapter)
        export_encoder_onnx(module, spec, output, opset=opset, dtype=dtype, metadata=meta)
    return Path(output)


def compose_onnx(
    bank: ModuleBank, encoder: str, decoder: str, output: str | Path, adapter: str | None = None
) -> Path:
    """Encoder_X [+ Adapter_X] + Decoder_Y as one swap graph: ``.dfm`` gives DeepFaceLive's layout at its
    default opset, anything else the torchsae layout. The graph is the checked PyTorch chain itself
    (``composed_swap``: X's own decoder gives the face mask where it reads X's code), exported and
    verified like every SAEHD export; ``bank join`` instead joins part files already exported."""
    from torchsae.export.onnx import export_onnx

    output = Path(output)
    layout = "dfm" if output.suffix.lower() == ".dfm" else "torchsae"
    swap = composed_swap(bank, encoder, decoder, adapter)
    export_onnx(swap, output, compose_model_config(bank, encoder, decoder), layout=layout)
    return output
