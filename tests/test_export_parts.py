"""Part exports (encoder: face -> code; decoder: code -> image, mask) and composing them into one swap
graph, layouts ``torchsae`` and ``dfm``, checked against PyTorch with ONNX Runtime and, for the .dfm,
through the DeepFaceLive loader double."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from helpers_deepfacelive import DeepFaceLiveDfm
from torch import nn

from torchsae.cli import LazyGroup
from torchsae.config import ModelConfig
from torchsae.export import ExportError
from torchsae.export.onnx import read_metadata
from torchsae.export.parts import (
    compose_onnx,
    export_decoder_onnx,
    export_encoder_onnx,
    read_part,
)
from torchsae.models import SAEHD
from torchsae.models.latent import LatentMismatchError, LatentSpec

RES = 32


pytestmark = pytest.mark.usefixtures("one_thread")


class Encoder(nn.Module):
    """DF's encoder + inter: face -> code."""

    def __init__(self, model: SAEHD) -> None:
        super().__init__()
        self.encoder, self.inter = model.encoder, model.inter

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.inter(self.encoder(face))


@pytest.fixture(scope="module")
def parts() -> tuple[nn.Module, nn.Module, nn.Module, LatentSpec]:
    torch.manual_seed(0)
    cfg = ModelConfig(archi="df", resolution=RES, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=8)
    model = SAEHD(cfg).eval()
    enc = Encoder(model).eval()
    code = enc(torch.rand(1, 3, RES, RES))
    spec = LatentSpec("A", int(code.shape[1]), int(code.shape[2]), RES, "wf")
    return enc, model.decoder_b, model.decoder_a, spec


@pytest.fixture(scope="module")
def files(parts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    enc, dec_b, dec_a, spec = parts
    root = tmp_path_factory.mktemp("parts")
    out = {}
    for opset in (17, 12):
        out[f"enc{opset}"] = export_encoder_onnx(
            enc, spec, root / f"enc{opset}.onnx", opset=opset, metadata={"identity": "A"}
        ).path
        out[f"dec{opset}"] = export_decoder_onnx(
            dec_b, spec, root / f"dec_b{opset}.onnx", opset=opset, metadata={"identity": "B"}
        ).path
        out[f"deca{opset}"] = export_decoder_onnx(
            dec_a, spec, root / f"dec_a{opset}.onnx", opset=opset, metadata={"identity": "A"}
        ).path
    return out


def _run(path: Path, name: str, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})


def test_parts_equal_pytorch_and_carry_their_spec(parts, files) -> None:
    enc, dec_b, _, spec = parts
    x = np.random.default_rng(1).random((4, 3, RES, RES), dtype=np.float32)
    (code,) = _run(files["enc17"], "face", x)
    with torch.no_grad():
        want = enc(torch.from_numpy(x))
        image, mask = dec_b(want)
    assert code.shape == (4, *spec.shape)
    assert np.abs(code - want.numpy()).max() <= 1e-4
    got_image, got_mask = _run(files["dec17"], "code", want.numpy())
    assert np.abs(got_image - image.numpy()).max() <= 1e-4 and np.abs(got_mask - mask.numpy()).max() <= 1e-4
    meta = read_metadata(files["enc17"])
    assert LatentSpec.from_dict(json.loads(meta["latent"])) == spec  # metadata round trip
    assert meta["part"] == "encoder" and meta["identity"] == "A" and meta["latent_id"] == spec.id
    info = read_part(files["dec12"])
    assert (info.part, info.spec, info.opset, info.metadata["identity"]) == ("decoder", spec, 12, "B")
    with pytest.raises(ExportError, match="is a decoder part, expected a encoder"):
        read_part(files["dec17"], "encoder")


def test_compose_torchsae_equals_decoder_of_encoder(parts, files, tmp_path: Path) -> None:
    enc, dec_b, dec_a, _ = parts
    out = tmp_path / "swap.onnx"
    result = compose_onnx(
        files["enc17"], files["dec17"], out, face_decoder_path=files["deca17"], modules=(enc, dec_b, dec_a)
    )
    assert result.torch_report is not None and result.torch_report.max_diff <= 1e-4
    x = np.random.default_rng(2).random((3, 3, RES, RES), dtype=np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["swapped", "swapped_mask", "face_mask"]
    swapped, swapped_mask, face_mask = session.run(None, {"face": x})
    with torch.no_grad():
        code = enc(torch.from_numpy(x))
        image, mask = dec_b(code)
        _, mask_a = dec_a(code)
    for got, want in ((swapped, image), (swapped_mask, mask), (face_mask, mask_a)):
        assert np.abs(got - want.numpy()).max() <= 1e-4
    meta = read_metadata(out)
    assert meta["layout"] == "torchsae" and meta["face_mask_from"] == "face_decoder"
    assert json.loads(meta["parts"])["decoder"]["identity"] == "B"


def test_compose_dfm_loads_in_deepfacelive(parts, files, tmp_path: Path) -> None:
    enc, dec_b, _, _ = parts
    out = tmp_path / "swap.dfm"
    result = runner_compose(files["enc12"], files["dec12"], out, "dfm")
    assert result.exit_code == 0, result.output
    dfm = DeepFaceLiveDfm(out)
    faces = np.random.default_rng(3).random((2, RES, RES, 3), dtype=np.float32)
    got = dfm.convert(faces)
    with torch.no_grad():
        image, mask = dec_b(enc(torch.from_numpy(faces).permute(0, 3, 1, 2)))
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    assert np.abs(got.celeb_face - nhwc(image)).max() <= 1e-4
    assert np.abs(got.celeb_mask - nhwc(mask)).max() <= 1e-4
    assert np.abs(got.face_mask - nhwc(mask)).max() <= 1e-4  # no face decoder: the decoder's mask
    with pytest.raises(ExportError, match="up to 16"):
        compose_onnx(files["enc17"], files["dec17"], tmp_path / "new.dfm", layout="dfm")
    assert not (tmp_path / "new.dfm").exists()


# as the lead wires it: a lazy subcommand of a group, whose TorchSAEErrors print as one line
GROUP = LazyGroup("bank", lazy_commands={"compose": "torchsae.cli.bank_export:compose_cmd"})


def runner_compose(enc: Path, dec: Path, out: Path, layout: str, *more: str):
    args = [
        "compose",
        "--encoder-onnx",
        str(enc),
        "--decoder-onnx",
        str(dec),
        "--output",
        str(out),
        "--layout",
        layout,
    ]
    return CliRunner().invoke(GROUP, [*args, *more])


def test_mismatched_spec_refused_in_one_line(parts, files, tmp_path: Path) -> None:
    _, dec_b, _, spec = parts
    other = LatentSpec("B", spec.channels, spec.size, spec.resolution, spec.face_type)
    foreign = export_decoder_onnx(dec_b, other, tmp_path / "foreign.onnx").path
    out = tmp_path / "mixed.onnx"
    with pytest.raises(LatentMismatchError, match="space 'A' vs 'B'"):
        compose_onnx(files["enc17"], foreign, out)
    result = runner_compose(files["enc17"], foreign, out, "torchsae")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "latent" in result.output, result.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["foreign.onnx"]


def test_export_refuses_a_spec_the_module_does_not_meet(parts, tmp_path: Path) -> None:
    enc, _, _, spec = parts
    wrong = LatentSpec("A", spec.channels * 2, spec.size, RES, "wf")
    with pytest.raises(ExportError, match="means"):
        export_encoder_onnx(enc, wrong, tmp_path / "enc.onnx")
    assert not list(tmp_path.iterdir())


def test_fp16_parts_and_dfm_face_mask_from_a_face_decoder(parts, files, tmp_path: Path) -> None:
    enc, dec_b, dec_a, spec = parts
    half = export_encoder_onnx(enc, spec, tmp_path / "enc16.onnx", opset=12, dtype="fp16")
    assert half.metadata["dtype"] == "fp16" and half.report.max_diff <= 1e-2
    out = tmp_path / "ab.dfm"
    result = runner_compose(
        half.path, files["dec12"], out, "dfm", "--face-decoder-onnx", str(files["deca12"])
    )
    assert result.exit_code == 0, result.output
    faces = np.random.default_rng(4).random((2, RES, RES, 3), dtype=np.float32)
    got = DeepFaceLiveDfm(out).convert(faces)
    with torch.no_grad():
        _, mask_a = dec_a(enc(torch.from_numpy(faces).permute(0, 3, 1, 2)))
    assert np.abs(got.face_mask - mask_a.permute(0, 2, 3, 1).numpy()).max() <= 1e-2
    assert read_metadata(out)["dtype"] == "fp16" and read_metadata(out)["face_mask_from"] == "face_decoder"
