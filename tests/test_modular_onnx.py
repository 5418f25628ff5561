"""Bank parts to ONNX from the CLI: `bank compose` to .onnx (adapter chain) and .dfm (DeepFaceLive's
contract, through the loader double), `bank export-part` + `bank join` recombining part files; each
equal to the PyTorch chain ``composed_swap`` builds from the same bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_deepfacelive import DeepFaceLiveDfm
from test_train_support import make_faceset

from torchsae.cli import main
from torchsae.export.session import make_session
from torchsae.modular.bank import ModuleBank
from torchsae.modular.compose import composed_swap

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--resolution", "32", "--ae-dims", "16", "--e-dims", "8", "--d-dims", "8", "--d-mask-dims", "4"]
RUN = ["--batch-size", "2", "--workers", "0", "--backend", "torch", "--device", "cpu", "--progress", "none"]
TOL = 1e-4  # float32 ONNX Runtime vs eager on a tiny conv net: observed ~1e-7, wiring errors are O(0.1)


def _ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modular_onnx")
    faces_a, faces_b = make_faceset(root / "faces", count=6)
    bank = root / "bank"
    common = ["--bank", str(bank), *TINY, *RUN, "--max-steps", "2"]
    _ok(["bank", "train", "--identity", "alice", "--data-dir", str(faces_a), *common])
    _ok(["bank", "train", "--identity", "bob", "--data-dir", str(faces_b), *common])
    adapt = ["bank", "adapt", "--identity", "bob", "--data-dir", str(faces_b), "--into", "alice"]
    _ok([*adapt, "--bank", str(bank), *RUN, "--max-steps", "2"])
    return bank


def _faces(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_compose_onnx_with_an_adapter_equals_the_pytorch_chain(bank: Path, tmp_path: Path) -> None:
    out = tmp_path / "bob_to_alice.onnx"
    args = ["--bank", str(bank), "--encoder", "bob", "--adapter", "bob", "--decoder", "alice"]
    assert "Composed" in _ok(["bank", "compose", *args, "--output", str(out)])
    session = make_session(out)
    faces = _faces()
    got = session.run(None, {session.get_inputs()[0].name: faces.numpy()})
    with torch.no_grad():
        want = composed_swap(ModuleBank(bank), "bob", "alice", adapter="bob").swap(faces)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=TOL, rtol=0)


def test_compose_dfm_runs_in_deepfacelive_and_equals_the_chain(bank: Path, tmp_path: Path) -> None:
    out = tmp_path / "alice_to_alice.dfm"
    _ok(
        [
            "bank",
            "compose",
            "--bank",
            str(bank),
            "--encoder",
            "alice",
            "--decoder",
            "alice",
            "--output",
            str(out),
        ]
    )
    faces = _faces()
    result = DeepFaceLiveDfm(out).convert(faces.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        swapped, swapped_mask, face_mask = composed_swap(ModuleBank(bank), "alice", "alice").swap(faces)
    np.testing.assert_allclose(result.celeb_face, swapped.permute(0, 2, 3, 1).numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(result.celeb_mask, swapped_mask.permute(0, 2, 3, 1).numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(result.face_mask, face_mask.permute(0, 2, 3, 1).numpy(), atol=TOL, rtol=0)


def test_part_files_recombine_and_a_mismatch_is_refused(bank: Path, tmp_path: Path) -> None:
    enc, dec, alien = tmp_path / "bob_enc.onnx", tmp_path / "alice_dec.onnx", tmp_path / "bob_raw.onnx"
    base = ["bank", "export-part", "--bank", str(bank)]
    _ok([*base, "--part", "adapter", "--identity", "bob", "--output", str(enc)])
    _ok([*base, "--part", "decoder", "--identity", "alice", "--output", str(dec)])
    _ok([*base, "--part", "encoder", "--identity", "bob", "--output", str(alien)])
    joined = tmp_path / "joined.onnx"
    _ok(["bank", "join", "--encoder-onnx", str(enc), "--decoder-onnx", str(dec), "--output", str(joined)])
    session = make_session(joined)
    faces = _faces()
    got = session.run(None, {session.get_inputs()[0].name: faces.numpy()})
    with torch.no_grad():
        want = composed_swap(ModuleBank(bank), "bob", "alice", adapter="bob").swap(faces)
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=TOL, rtol=0)

    refused = CliRunner().invoke(
        main,
        [
            "bank",
            "join",
            "--encoder-onnx",
            str(alien),
            "--decoder-onnx",
            str(dec),
            "--output",
            str(tmp_path / "x.onnx"),
        ],
    )
    assert refused.exit_code != 0 and not (tmp_path / "x.onnx").exists()
    line = refused.output.strip().splitlines()[-1]
    assert line.startswith("Error:") and "bob:" in line and "alice:" in line
