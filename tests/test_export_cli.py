"""``torchsae export`` and ``torchsae build-engine`` through click, from a real saved checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from helpers_deepfacelive import DeepFaceLiveDfm

from torchsae.cli import main
from torchsae.config import Config, DataConfig, ModelConfig
from torchsae.export.tensorrt import missing_requirements
from torchsae.models import SAEHD
from torchsae.train.checkpoint import save_checkpoint

FACES = Path(__file__).parent / "fixtures" / "dfl"


def run_export(checkpoint: Path, output: Path, *options: str):
    """``torchsae export --checkpoint CHECKPOINT --output OUTPUT [OPTIONS]`` through click."""
    return CliRunner().invoke(
        main, ["export", "--checkpoint", str(checkpoint), "--output", str(output), *options]
    )


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[Path, SAEHD]:
    torch.manual_seed(0)
    faces = tmp_path / "data_a"
    faces.mkdir()
    for jpg in sorted(FACES.glob("dfl_*.jpg"))[:3]:
        shutil.copy(jpg, faces / jpg.name)
    cfg = Config(
        model=ModelConfig(archi="liae-ud", resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=8),
        data=DataConfig(data_dir_a=str(faces)),
    )
    model = SAEHD(cfg.model).eval()
    path = tmp_path / "models" / "last.pth"
    save_checkpoint(path, {"step": 42, "config": cfg.to_dict(), "model": model.state_dict()})
    return path, model


def test_export_dfm_from_checkpoint(checkpoint: tuple[Path, SAEHD], tmp_path: Path) -> None:
    path, model = checkpoint
    out = tmp_path / "models" / "sae_32.dfm"
    result = run_export(path, out, "--model-size", "32")  # the .dfm suffix selects the dfm layout
    assert result.exit_code == 0, result.output
    assert "layout dfm" in result.output and "opset 12" in result.output
    assert "faces_b3" in result.output  # verified on the checkpoint's A faces, not only random inputs
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["training_step"] == "42"
    double = DeepFaceLiveDfm(out)
    face = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        want = model.swap(torch.from_numpy(face.transpose(0, 3, 1, 2).copy()))
    for batch in (slice(0, 1), slice(0, 3)):
        face_mask, swapped, swapped_mask = double.convert(face[batch])
        for got, ref in zip((swapped, swapped_mask, face_mask), want, strict=True):
            assert np.abs(got - ref[batch].numpy().transpose(0, 2, 3, 1)).max() <= 1e-4


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("last.pth", (), "must end in .onnx or .dfm"),
        ("sae", (), "must end in .onnx or .dfm"),
        ("sae.dfm", ("--layout", "torchsae"), "drop --layout torchsae"),
        ("sae.dfm", ("--opset", "17"), "reads opsets up to 16"),
        ("sae.onnx", ("--layout", "dfm", "--opset", "18"), "reads opsets up to 16"),
        ("config.onnx", (), "not an ONNX model"),
    ],
)
def test_bad_outputs_are_one_line_errors(
    checkpoint: tuple[Path, SAEHD], tmp_path: Path, name: str, options: tuple[str, ...], message: str
) -> None:
    path, _ = checkpoint
    (tmp_path / "config.onnx").write_text("model:\n  archi: df\n")
    before = {p: p.read_bytes() for p in (path, tmp_path / "config.onnx")}
    result = run_export(path, tmp_path / name, *options)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert {p: p.read_bytes() for p in before} == before  # nothing overwritten
    assert not (tmp_path / name).exists() or name == "config.onnx"


def test_checkpoint_itself_is_never_the_output(checkpoint: tuple[Path, SAEHD], tmp_path: Path) -> None:
    path, _ = checkpoint
    renamed = path.with_suffix(".onnx")  # a checkpoint that happens to end in .onnx
    path.rename(renamed)
    before = renamed.read_bytes()
    result = run_export(renamed, renamed)
    assert result.exit_code == 1 and "checkpoint being exported" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert renamed.read_bytes() == before


def test_an_earlier_export_is_replaced(checkpoint: tuple[Path, SAEHD], tmp_path: Path) -> None:
    path, _ = checkpoint
    out = tmp_path / "sae.onnx"
    assert run_export(path, out).exit_code == 0
    assert run_export(path, out).exit_code == 0  # an existing ONNX file may be overwritten


def test_export_torchsae_fp16_with_faces_dir(checkpoint: tuple[Path, SAEHD], tmp_path: Path) -> None:
    path, _ = checkpoint
    out = tmp_path / "sae.onnx"
    result = run_export(path, out, "--dtype", "fp16", "--verify-faces", str(FACES))
    assert result.exit_code == 0, result.output
    assert "faces_b7" in result.output and "tolerance 1e-02" in result.output
    assert ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map["dtype"] == "fp16"


def test_model_size_mismatch_is_one_line_error(checkpoint: tuple[Path, SAEHD], tmp_path: Path) -> None:
    path, _ = checkpoint
    out = tmp_path / "sae_256.onnx"
    result = run_export(path, out, "--model-size", "256")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--model-size 256" in lines[0] and "resolution 32" in lines[0]
    assert not out.exists()


def test_missing_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    result = run_export(tmp_path / "no.pth", tmp_path / "x.onnx")
    assert (
        result.exit_code == 1 and "no.pth" in result.output and len(result.output.strip().splitlines()) == 1
    )


@pytest.mark.skipif(
    missing_requirements() is None, reason="TensorRT and a GPU are present; see test_tensorrt.py"
)
def test_build_engine_without_tensorrt_exits_2(checkpoint: tuple[Path, SAEHD], tmp_path: Path) -> None:
    path, _ = checkpoint
    onnx_path = tmp_path / "sae.onnx"
    assert run_export(path, onnx_path).exit_code == 0
    engine = tmp_path / "sae.engine"
    result = CliRunner().invoke(main, ["build-engine", "--onnx", str(onnx_path), "--output", str(engine)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: build-engine needs ")
    assert not engine.exists()
