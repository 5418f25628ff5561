"""The module bank (round trip, one-line errors), the parts (DF's own, adapters start as identity) and
compose-to-checkpoint (latent checks; a checkpoint export and swap read)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_support import TINY_MODEL

from torchsae.config import ModelConfig
from torchsae.modular.bank import BankError, ModuleBank
from torchsae.modular.compose import compose_checkpoint, composed_swap
from torchsae.modular.latent import LatentMismatchError
from torchsae.modular.parts import Adapter, build_parts, check_df, latent_spec
from torchsae.train.trainer import state_digest

DF = ModelConfig(**{**TINY_MODEL, "archi": "df"})


def _faces(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, DF.resolution, DF.resolution, generator=torch.Generator().manual_seed(seed))


def _bank_with(tmp_path: Path, *identities: str, space: dict[str, str] | None = None) -> ModuleBank:
    bank = ModuleBank(tmp_path / "bank")
    for i, identity in enumerate(identities):
        torch.manual_seed(i)
        enc, dec = build_parts(DF)
        spec = latent_spec(DF, (space or {}).get(identity, identity))
        bank.save_part("encoder", identity, enc, spec, {"steps": 10 + i}, DF)
        bank.save_part("decoder", identity, dec, spec, {"steps": 10 + i}, DF)
    return bank


def test_bank_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc, dec = build_parts(DF)
    bank = ModuleBank(tmp_path / "bank")
    spec = latent_spec(DF, "alice")
    bank.save_part("encoder", "alice", enc, spec, {"steps": 7}, DF)
    bank.save_part("decoder", "alice", dec, spec, {"steps": 7}, DF)
    enc2, spec2, meta = bank.load_part("encoder", "alice")
    dec2, _, _ = bank.load_part("decoder", "alice")
    assert spec2 == spec and meta == {"steps": 7}
    assert state_digest(enc2.state_dict()) == state_digest(enc.state_dict())
    assert state_digest(dec2.state_dict()) == state_digest(dec.state_dict())
    face = _faces()
    assert torch.equal(dec2(enc2(face))[0], dec(enc(face))[0])
    assert [(p.identity, p.kind, p.latent.id) for p in bank.list()] == [
        ("alice", "encoder", spec.id),
        ("alice", "decoder", spec.id),
    ]
    # SAEHD's own submodules: the part's keys are DF SAEHD's encoder.* / inter.*
    assert all(k.split(".")[0] in ("encoder", "inter") for k in enc.state_dict())


def test_bank_errors_name_the_file(tmp_path: Path) -> None:
    bank = _bank_with(tmp_path, "alice")
    with pytest.raises(BankError, match=r"bob[/\\]encoder\.pth: no encoder of identity 'bob'"):
        bank.load_part("encoder", "bob")
    (tmp_path / "bank" / "alice" / "decoder.pth").write_bytes(b"not torch")
    with pytest.raises(BankError, match=r"decoder\.pth: not a readable bank part") as info:
        bank.load_part("decoder", "alice")
    assert "\n" not in str(info.value)
    with pytest.raises(BankError, match="identity"):
        bank.path("encoder", "a/b")


def test_liae_refused() -> None:
    with pytest.raises(LatentMismatchError, match="no shared latent"):
        check_df(ModelConfig(**TINY_MODEL))


def test_untrained_adapter_is_identity() -> None:
    code = torch.randn(2, 16, 4, 4)
    assert torch.equal(Adapter(16)(code), code)


def test_compose_refuses_a_latent_mismatch(tmp_path: Path) -> None:
    bank = _bank_with(tmp_path, "alice", "bob")
    with pytest.raises(
        LatentMismatchError, match="alice's encoder produces latent alice:.*bob's decoder"
    ) as info:
        compose_checkpoint(bank, "alice", "bob", tmp_path / "x.pth")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.pth").exists()


def test_compose_checkpoint_loads_for_export(tmp_path: Path) -> None:
    from torchsae.export.source import load_model_for_export

    bank = _bank_with(tmp_path, "alice", "bob", space={"bob": "alice"})
    out = compose_checkpoint(bank, "bob", "alice", tmp_path / "bob_to_alice.pth")
    model, config, step = load_model_for_export(out)
    assert config.model.archi == "df" and step == 0
    enc, _, _ = bank.load_part("encoder", "bob")
    dec_y, _, _ = bank.load_part("decoder", "alice")
    face = _faces()
    swapped, swapped_mask, _ = model.swap(face)
    assert torch.equal(swapped, dec_y(enc(face))[0])
    chain = composed_swap(bank, "bob", "alice")
    assert torch.equal(chain.swap(face)[0], swapped)
    # bob's own decoder (same space) gives decoder_a: A's face mask
    dec_x, _, _ = bank.load_part("decoder", "bob")
    assert state_digest(model.decoder_a.state_dict()) == state_digest(dec_x.state_dict())


def test_adapter_chain_is_checked(tmp_path: Path) -> None:
    bank = _bank_with(tmp_path, "alice", "bob")
    adapter = Adapter(16)
    meta = {"input_latent": latent_spec(DF, "bob").to_dict(), "into": "alice"}
    bank.save_part("adapter", "bob", adapter, latent_spec(DF, "alice"), meta)
    chain = composed_swap(bank, "bob", "alice", adapter="bob")
    face = _faces()
    enc, _, _ = bank.load_part("encoder", "bob")
    dec, _, _ = bank.load_part("decoder", "alice")
    assert torch.equal(chain.swap(face)[0], dec(enc(face))[0])  # an untrained adapter changes nothing
    with pytest.raises(LatentMismatchError, match="alice's encoder produces latent alice:.*bob's adapter"):
        composed_swap(bank, "alice", "alice", adapter="bob")
    with pytest.raises(BankError, match="no adapter slot"):
        compose_checkpoint(bank, "bob", "alice", tmp_path / "x.pth", adapter="bob")
