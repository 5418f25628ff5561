"""Hybrid with SAEHD: ``torchsae train --init-from-bank`` copies exactly the named bank parts into a
fresh DF run (the others keep SAEHD's init), states each in the start summary, and is ignored on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_train_support import TINY_FLAGS, TINY_MODEL, make_faceset, tiny_config

from torchsae.cli.train import train_cmd
from torchsae.config import ModelConfig
from torchsae.modular.bank import ModuleBank
from torchsae.modular.hybrid import HybridInit, hybrid_task_factory
from torchsae.modular.latent import LatentMismatchError
from torchsae.modular.parts import build_parts, latent_spec
from torchsae.train.saehd_task import SAEHDTask
from torchsae.train.trainer import state_digest

pytestmark = pytest.mark.usefixtures("one_thread")

DF = ModelConfig(**{**TINY_MODEL, "archi": "df"})


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    """alice (space alice), carol (distilled: space alice), bob (space bob); distinct random weights."""
    folder = tmp_path / "bank"
    bank = ModuleBank(folder)
    for seed, (identity, space) in enumerate((("alice", "alice"), ("carol", "alice"), ("bob", "bob"))):
        torch.manual_seed(100 + seed)
        enc, dec = build_parts(DF)
        bank.save_part("encoder", identity, enc, latent_spec(DF, space), {"steps": 5}, DF)
        bank.save_part("decoder", identity, dec, latent_spec(DF, space), {"steps": 5}, DF)
    return folder


def _config(tmp_path: Path):
    cfg = tiny_config(tmp_path / "run", (tmp_path, tmp_path), 1)
    cfg.model = ModelConfig(**DF.__dict__)
    return cfg.validate()


def _digest(module: torch.nn.Module) -> str:
    return state_digest(module.state_dict())


def test_hybrid_copies_exactly_the_named_parts(tmp_path: Path, bank: Path) -> None:
    cfg = _config(tmp_path)
    torch.manual_seed(cfg.train.seed)
    plain = SAEHDTask(cfg, "none", torch.device("cpu")).model
    torch.manual_seed(cfg.train.seed)
    init = HybridInit.from_options(str(bank), "alice", None, "carol")
    task = hybrid_task_factory(init)(cfg, "none", torch.device("cpu"))
    model, parts = task.model, ModuleBank(bank)
    enc = parts.load_part("encoder", "alice")[0]
    assert _digest(model.encoder) == _digest(enc.encoder)
    assert _digest(model.inter) == _digest(enc.inter)
    assert _digest(model.decoder_b) == _digest(parts.load_part("decoder", "carol")[0])
    assert _digest(model.decoder_a) == _digest(plain.decoder_a)  # not named: SAEHD's own init
    assert _digest(model.decoder_a) != _digest(parts.load_part("decoder", "alice")[0])
    notes = "\n".join(task.start_notes)
    assert "decoder_b <- carol's decoder" in notes and "encoder <- alice's encoder" in notes
    assert "decoder_a: SAEHD's own initialisation" in notes


def test_hybrid_refuses_a_decoder_of_another_space(tmp_path: Path, bank: Path) -> None:
    cfg = _config(tmp_path)
    init = HybridInit.from_options(str(bank), None, "alice", "bob")
    with pytest.raises(LatentMismatchError, match="alice's encoder produces latent alice:.*bob's decoder"):
        hybrid_task_factory(init)(cfg, "none", torch.device("cpu"))


def test_train_cli_init_from_bank(tmp_path: Path, bank: Path) -> None:
    faces = make_faceset(tmp_path / "faces", count=4)
    flags = [*TINY_FLAGS, "--archi", "df", "--data-dir-a", str(faces[0]), "--data-dir-b", str(faces[1])]
    flags += ["--run-dir", str(tmp_path / "run"), "--progress", "none", "--init-from-bank", str(bank)]
    flags += ["--init-a", "alice", "--init-b", "carol"]
    result = CliRunner().invoke(train_cmd, [*flags, "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert "decoder_a <- alice's decoder" in result.output and "decoder_b <- carol's decoder" in result.output
    resumed = CliRunner().invoke(train_cmd, [*flags, "--max-steps", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert "--init-from-bank ignored: resuming" in resumed.output and "<- alice" not in resumed.output


def test_hybrid_half_resume_half_is_bitwise_identical(tmp_path: Path, bank: Path) -> None:
    from torchsae.train import checkpoint as ck
    from torchsae.train.trainer import train

    faces = make_faceset(tmp_path / "faces", count=4)
    factory = hybrid_task_factory(HybridInit.from_options(str(bank), None, "alice", "carol"))

    def config(run: str, steps: int):
        cfg = tiny_config(tmp_path / run, faces, steps)
        cfg.model = ModelConfig(**DF.__dict__)
        return cfg.validate()

    train(config("straight", 4), task_factory=factory)
    train(config("split", 2), task_factory=factory)
    train(config("split", 4), resume=tmp_path / "split" / "models" / "last.pth")  # resume: plain SAEHD
    a = ck.load_checkpoint(tmp_path / "straight" / "models" / "last.pth")
    b = ck.load_checkpoint(tmp_path / "split" / "models" / "last.pth")
    assert state_digest(a["model"]) == state_digest(b["model"])
    assert a["data"][0] == b["data"][0]
