"""DeepFaceLive's loading rules (spec §6) as ``check_dfm_contract`` applies them.

The checker is itself validated on DeepFaceLab's own ``.dfm`` (which DeepFaceLive accepts, and
whose outputs must reproduce DeepFaceLab's reference within 2e-6) and on hand-built graphs that
break one rule each. Models are run through ``helpers_deepfacelive.DeepFaceLiveDfm``, a double of
DeepFaceLive's loader (literal input names, outputs by position), never with a hand-written feed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers_deepfacelive import DeepFaceLiveDfm, DfmLoadError
from onnx import TensorProto, helper

from torchsae.config import ModelConfig
from torchsae.export import DfmContractError
from torchsae.export.layouts import check_dfm_contract
from torchsae.export.onnx import export_onnx
from torchsae.models import SAEHD

DFL_MODEL = Path(__file__).parent / "fixtures" / "dfl_models" / "a_df-ud_r64"


@pytest.fixture(scope="module")
def dfl_dfm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dfl") / "new_SAEHD_model.dfm"
    path.write_bytes(gzip.decompress((DFL_MODEL / "new_SAEHD_model.dfm.gz").read_bytes()))
    return path


def test_deepfacelab_dfm_passes_loader_rules(dfl_dfm: Path) -> None:
    info = check_dfm_contract(str(dfl_dfm), batch=3)
    assert (info.height, info.width) == (64, 64)  # dfm_check.json: input_hw [64, 64]
    assert info.input_name == "in_face:0" and not info.has_morph_value
    assert info.output_names == ("out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0")


def test_deepfacelab_dfm_reproduces_reference(dfl_dfm: Path) -> None:
    """The loader double runs DeepFaceLab's own .dfm (what DeepFaceLive accepts) and reproduces it."""
    reference = np.load(DFL_MODEL / "reference_io.npz")
    assert [o.version for o in onnx.load(str(dfl_dfm)).opset_import if o.domain == ""] == [12]
    double = DeepFaceLiveDfm(dfl_dfm)
    assert (double.height, double.width, double.has_morph_value) == (64, 64, False)
    for batch in (slice(0, 1), slice(0, 3)):
        outputs = double.convert(reference["in_face"][batch])
        for got, name in zip(
            outputs, ("out_face_mask", "out_celeb_face", "out_celeb_face_mask"), strict=True
        ):
            assert got.shape == reference[name][batch].shape
            assert np.abs(got - reference[name][batch]).max() <= 2e-6
    # DeepFaceLive resizes other face sizes to the model's and back; uint8 frames are divided by 255
    face = (reference["in_face"][0] * 255).round().astype(np.uint8)
    big = np.repeat(np.repeat(face, 2, axis=0), 2, axis=1)
    out = double.convert(big)
    assert out.celeb_face.shape == (1, 128, 128, 3) and out.face_mask.shape == (1, 128, 128, 1)


def test_double_refuses_what_deepfacelive_refuses() -> None:
    with pytest.raises(DfmLoadError, match="in_face"):
        DeepFaceLiveDfm(_as_file(toy_dfm(input_name="face")))
    # the bug of issue 13: 'in_face' loads, then fails on the first frame ('in_face:0' is fed)
    double = DeepFaceLiveDfm(_as_file(toy_dfm(input_name="in_face")))
    with pytest.raises(Exception, match="in_face"):
        double.convert(np.zeros((1, 8, 8, 3), np.float32))


@pytest.mark.parametrize(("archi", "dtype"), [("df-ud", "fp32"), ("liae-udt", "fp32"), ("liae-ud", "fp16")])
def test_our_dfm_passes_loader_rules(tmp_path: Path, archi: str, dtype: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(archi=archi, resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=8)
    model = SAEHD(cfg).eval()
    export_onnx(model, tmp_path / "model.dfm", cfg, layout="dfm", dtype=dtype)
    info = check_dfm_contract(str(tmp_path / "model.dfm"), batch=2)
    assert (info.height, info.width) == (32, 32)
    assert info.input_name == "in_face:0"
    assert info.output_names == ("out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0")
    assert [o.version for o in onnx.load(str(tmp_path / "model.dfm")).opset_import if o.domain == ""] == [12]
    double = DeepFaceLiveDfm(tmp_path / "model.dfm")
    faces = np.random.default_rng(3).random((3, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        swapped, swapped_mask, face_mask = model.swap(torch.from_numpy(faces).permute(0, 3, 1, 2))
    bound = 1e-2 if dtype == "fp16" else 1e-5
    for batch in (slice(0, 1), slice(0, 3)):
        out = double.convert(faces[batch])
        for got, want in zip(out, (face_mask, swapped, swapped_mask), strict=True):
            assert np.abs(got - want[batch].permute(0, 2, 3, 1).numpy()).max() <= bound


def test_torchsae_layout_is_not_a_dfm(tmp_path: Path) -> None:
    cfg = ModelConfig(archi="df-ud", resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=8)
    export_onnx(SAEHD(cfg), tmp_path / "model.onnx", cfg, layout="torchsae")
    with pytest.raises(DfmContractError, match="in_face"):
        check_dfm_contract(str(tmp_path / "model.onnx"))


def _as_file(data: bytes) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".dfm", delete=False) as handle:
        handle.write(data)
    return handle.name


def toy_dfm(
    input_name: str = "in_face:0",
    channels: tuple[int, ...] = (1, 3, 1),
    extra_input: str | None = None,
    hw: tuple[int | str, int | str] = (8, 8),
    opset: int = 12,
) -> bytes:
    """A graph that slices/tiles its NHWC input into outputs with the given channel counts."""
    h, w = hw
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", h, w, 3])]
    nodes, outputs, inits = [], [], []
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.FLOAT, [1]))
    for i, c in enumerate(channels):
        starts, ends, axes = (f"s{i}", f"e{i}", f"a{i}")
        inits += [
            helper.make_tensor(starts, TensorProto.INT64, [1], [0]),
            helper.make_tensor(ends, TensorProto.INT64, [1], [c]),
            helper.make_tensor(axes, TensorProto.INT64, [1], [3]),
        ]
        nodes.append(helper.make_node("Slice", [input_name, starts, ends, axes], [f"out{i}"]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, ["N", h, w, c]))
    graph = helper.make_graph(nodes, "toy", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_checker_accepts_toy_and_morph_value() -> None:
    assert check_dfm_contract(toy_dfm()).height == 8
    assert check_dfm_contract(toy_dfm(extra_input="morph_value:0")).has_morph_value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_name": "face"}, "in_face"),
        ({"input_name": "in_face"}, "literal name 'in_face:0'"),  # issue 13: loads, fails on frame 1
        ({"extra_input": "strength"}, "morph_value"),
        ({"extra_input": "morph_value"}, "literal name 'morph_value:0'"),
        ({"opset": 17}, "reads opsets up to 16"),
        ({"channels": (1, 3)}, "exactly 3 outputs"),
        ({"channels": (3, 1, 1)}, "output 0"),  # celeb_face first: unpacked by position, wrong
        ({"hw": ("H", "W")}, "static H, W"),
    ],
)
def test_checker_rejects_rule_breakers(kwargs: dict, message: str) -> None:
    with pytest.raises(DfmContractError, match=message):
        check_dfm_contract(toy_dfm(**kwargs))
