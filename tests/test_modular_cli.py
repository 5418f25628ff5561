"""``torchsae bank``: every mode from the command line, list, compose (latents checked), resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_train_support import make_faceset

from torchsae.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--resolution", "32", "--ae-dims", "16", "--e-dims", "8", "--d-dims", "8", "--d-mask-dims", "4"]
RUN = ["--batch-size", "2", "--workers", "0", "--backend", "torch", "--device", "cpu", "--progress", "none"]


def _ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_bank_cli_all_modes(tmp_path: Path) -> None:
    faces_a, faces_b = make_faceset(tmp_path / "faces", count=6)
    bank = str(tmp_path / "bank")
    common = ["--bank", bank, *TINY, *RUN, "--max-steps", "2"]
    _ok(["bank", "train", "--identity", "alice", "--data-dir", str(faces_a), *common])
    _ok(["bank", "train", "--identity", "bob", "--data-dir", str(faces_b), *common])
    _ok(["bank", "distill", "--identity", "carol", "--data-dir", str(faces_b), "--teacher", "alice", *common])
    _ok(
        [
            "bank",
            "adapt",
            "--identity",
            "bob",
            "--data-dir",
            str(faces_b),
            "--into",
            "alice",
            "--bank",
            bank,
            *RUN,
            "--max-steps",
            "2",
        ]
    )
    listing = json.loads(_ok(["bank", "list", "--bank", bank, "--json"]))
    got = {(p["identity"], p["kind"]): p["latent"].split(":")[0] for p in listing["parts"]}
    assert got == {
        ("alice", "encoder"): "alice",
        ("alice", "decoder"): "alice",
        ("bob", "encoder"): "bob",
        ("bob", "adapter"): "alice",
        ("bob", "decoder"): "bob",
        ("carol", "encoder"): "alice",
        ("carol", "decoder"): "alice",
    }
    assert "carol" in _ok(["bank", "list", "--bank", bank])
    # the run folder defaults to BANK/runs/IDENTITY-MODE and resumes like torchsae train
    assert (tmp_path / "bank" / "runs" / "carol-distill" / "models" / "last.pth").is_file()
    out = _ok(["bank", "train", "--identity", "alice", "--bank", bank, *RUN, "--max-steps", "3"])
    assert "Resuming from" in out
    steps = json.loads(_ok(["bank", "list", "--bank", bank, "--json"]))["parts"][0]["meta"]["steps"]
    assert steps == 3

    output = tmp_path / "carol_to_alice.pth"
    assert "Composed" in _ok(
        [
            "bank",
            "compose",
            "--bank",
            bank,
            "--encoder",
            "carol",
            "--decoder",
            "alice",
            "--output",
            str(output),
        ]
    )
    from torchsae.export.source import load_model_for_export

    model, config, _ = load_model_for_export(output)
    assert config.model.archi == "df"

    refused = CliRunner().invoke(
        main,
        [
            "bank",
            "compose",
            "--bank",
            bank,
            "--encoder",
            "bob",
            "--decoder",
            "alice",
            "--output",
            str(tmp_path / "no.pth"),
        ],
    )
    assert refused.exit_code != 0
    line = refused.output.strip().splitlines()[-1]
    assert line.startswith("Error: bob's encoder produces latent bob:") and "alice's decoder" in line
    assert not (tmp_path / "no.pth").exists()


def test_bank_train_refuses_liae(tmp_path: Path) -> None:
    faces_a, _ = make_faceset(tmp_path / "faces", count=4)
    result = CliRunner().invoke(
        main,
        [
            "bank",
            "train",
            "--bank",
            str(tmp_path / "bank"),
            "--identity",
            "x",
            "--data-dir",
            str(faces_a),
            "--archi",
            "liae-ud",
            *TINY,
            *RUN,
            "--max-steps",
            "1",
        ],
    )
    assert result.exit_code != 0 and "no shared latent" in result.output
