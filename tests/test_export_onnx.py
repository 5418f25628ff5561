"""ONNX export: both layouts for every archi family, checked independently with onnx + ONNX Runtime.

References: the PyTorch model's own ``swap`` (layout permutes written out here with numpy), real
faces from the DeepFaceLab fixtures, and DeepFaceLab's own outputs (reference_io.npz) for its weights.
"""

from __future__ import annotations

import glob
import gzip
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers_deepfacelive import DeepFaceLiveDfm

import torchsae
from torchsae.config import ModelConfig, preset
from torchsae.dfl.unpickle import restricted_loads
from torchsae.errors import TorchSAEError
from torchsae.export import ExportError, VerificationError
from torchsae.export import onnx as onnx_module
from torchsae.export import verify as verify_module
from torchsae.export.onnx import export_onnx, read_metadata
from torchsae.export.verify import FP16_TOLERANCE, FP32_TOLERANCE
from torchsae.models import SAEHD
from torchsae.models.tf_layout import tf_to_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
DFL_MODEL = FIXTURES / "dfl_models" / "a_df-ud_r64"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: extra intra-op threads only add synchronisation (and spin on a shared CI box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(archi: str, resolution: int = 32) -> tuple[SAEHD, ModelConfig]:
    torch.manual_seed(0)
    cfg = ModelConfig(archi=archi, resolution=resolution, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=8)
    return SAEHD(cfg).eval(), cfg


def real_faces(resolution: int) -> np.ndarray:
    """The six DeepFaceLab sample faces (128 px, BGR [0, 1]) area-resized to ``resolution``."""
    files = sorted(glob.glob(str(FIXTURES / "dfl" / "sampleproc_r128" / "*img_bgr.npy")))
    faces = [cv2.resize(np.load(f), (resolution, resolution), interpolation=cv2.INTER_AREA) for f in files]
    return np.stack(faces).astype(np.float32)


def torch_swap_nhwc(model: SAEHD, faces_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(swapped, swapped_mask, face_mask) from PyTorch, as NHWC numpy arrays."""
    with torch.no_grad():
        outs = model.swap(torch.from_numpy(faces_nhwc.transpose(0, 3, 1, 2).copy()))
    return tuple(o.numpy().transpose(0, 2, 3, 1) for o in outs)  # type: ignore[return-value]


def run_ort(session, layout: str, faces_nhwc: np.ndarray) -> list[np.ndarray]:
    """Run the model; return outputs as NHWC in torchsae order (swap, swap mask, mask).

    ``dfm`` models run through DeepFaceLive's loader double (literal input names, outputs by position).
    """
    if layout == "dfm":
        face_mask, swapped, swapped_mask = session.convert(faces_nhwc)
        return [swapped, swapped_mask, face_mask]
    outs = session.run(None, {"face": np.ascontiguousarray(faces_nhwc.transpose(0, 3, 1, 2))})
    return [o.transpose(0, 2, 3, 1) for o in outs]


def open_model(path: Path, layout: str):
    """DeepFaceLive's loader double for a ``.dfm``, a plain ONNX Runtime session otherwise."""
    if layout == "dfm":
        return DeepFaceLiveDfm(path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_matches(path: Path, layout: str, model: SAEHD, resolution: int, bound: float) -> None:
    rng = np.random.default_rng(1)
    inputs = [rng.random((b, resolution, resolution, 3), dtype=np.float32) for b in (1, 3)]
    inputs.append(real_faces(resolution))
    session = open_model(path, layout)
    for faces in inputs:
        got = run_ort(session, layout, faces)
        want = torch_swap_nhwc(model, faces)
        for g, w, c in zip(got, want, (3, 1, 1), strict=True):
            assert g.shape == (len(faces), resolution, resolution, c)
            assert np.abs(g - w).max() <= bound


ARCHIS = ["df", "df-ud", "liae-ud", "df-udt", "liae-udt"]


@pytest.mark.parametrize("layout", ["torchsae", "dfm"])
@pytest.mark.parametrize("archi", ARCHIS)
def test_export_matches_pytorch(tmp_path: Path, archi: str, layout: str) -> None:
    model, cfg = tiny(archi)
    out = tmp_path / f"m.{'dfm' if layout == 'dfm' else 'onnx'}"
    result = export_onnx(model, out, cfg, layout=layout, faces=real_faces(32))
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    proto = onnx.load(str(out))
    want_opset = 12 if layout == "dfm" else 17  # dfm: DeepFaceLab's own opset, which DeepFaceLive reads
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [want_opset]
    batch_dims = [i.type.tensor_type.shape.dim[0] for i in (*proto.graph.input, *proto.graph.output)]
    assert all(d.dim_param and not d.dim_value for d in batch_dims)  # dynamic batch everywhere
    assert result.report.max_diff <= FP32_TOLERANCE
    assert_matches(out, layout, model, 32, FP32_TOLERANCE)


def test_dfm_layout_names_and_shapes(tmp_path: Path) -> None:
    model, cfg = tiny("liae-ud")
    export_onnx(model, tmp_path / "m.dfm", cfg, layout="dfm")
    session = ort.InferenceSession(str(tmp_path / "m.dfm"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    # DeepFaceLab's tf2onnx names, ':0' included: DeepFaceLive feeds 'in_face:0' literally
    assert inp.name == "in_face:0" and inp.shape[1:] == [32, 32, 3] and inp.type == "tensor(float)"
    assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [
        ("out_face_mask:0", [32, 32, 1]),
        ("out_celeb_face:0", [32, 32, 3]),
        ("out_celeb_face_mask:0", [32, 32, 1]),
    ]
    double = DeepFaceLiveDfm(tmp_path / "m.dfm")
    assert (double.height, double.width, double.has_morph_value) == (32, 32, False)


def test_metadata(tmp_path: Path) -> None:
    model, cfg = tiny("df-ud")
    export_onnx(model, tmp_path / "m.onnx", cfg, step=1234)
    meta = read_metadata(tmp_path / "m.onnx")
    expected = {
        "archi": "df-ud",
        "resolution": "32",
        "ae_dims": "16",
        "e_dims": "8",
        "d_dims": "8",
        "d_mask_dims": "8",
        "channel_order": "BGR",
        "layout": "torchsae",
        "tensor_layout": "NCHW",
        "dtype": "fp32",
        "training_step": "1234",
        "torchsae_version": torchsae.__version__,
    }
    assert {k: meta.get(k) for k in expected} == expected


def test_opset18_uses_new_exporter_and_matches(tmp_path: Path) -> None:
    model, cfg = tiny("liae-ud")
    result = export_onnx(model, tmp_path / "m.onnx", cfg, layout="torchsae", opset=18)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert result.exporter in ("dynamo", "torchscript")
    assert_matches(tmp_path / "m.onnx", "torchsae", model, 32, FP32_TOLERANCE)


def test_dfm_opset_16_is_read_and_17_refused(tmp_path: Path) -> None:
    """DeepFaceLive's ONNX Runtime 1.11 reads opsets up to 16: the highest allowed still works."""
    model, cfg = tiny("df-ud")
    export_onnx(model, tmp_path / "m.dfm", cfg, layout="dfm", opset=16)
    proto = onnx.load(str(tmp_path / "m.dfm"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [16]
    assert_matches(tmp_path / "m.dfm", "dfm", model, 32, FP32_TOLERANCE)
    with pytest.raises(ExportError, match=r"opset 17: .*ONNX Runtime 1\.11 reads opsets up to 16") as info:
        export_onnx(model, tmp_path / "n.dfm", cfg, layout="dfm", opset=17)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "n.dfm").exists()


def test_op_newer_than_the_opset_is_refused() -> None:
    """An op that does not exist at the declared opset (here Gelu, new in 20, stamped opset 12)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], name="g")], "t", [x], [x])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    with pytest.raises(VerificationError, match="'Gelu', which does not exist at opset 12"):
        onnx_module.check_ops_exist(proto, "m.dfm")
    proto.opset_import[0].version = 20
    onnx_module.check_ops_exist(proto, "m.dfm")  # fine at 20
    func = helper.make_function(
        "local", "f", ["a"], ["b"], [helper.make_node("Gelu", ["a"], ["b"])], [helper.make_opsetid("", 12)]
    )
    proto.functions.append(func)
    with pytest.raises(VerificationError, match="function 'f'"):
        onnx_module.check_ops_exist(proto, "m.dfm")


@pytest.mark.slow
@pytest.mark.parametrize("opset", [19, 20])
def test_newer_opsets(tmp_path: Path, opset: int) -> None:
    model, cfg = tiny("df-udt")
    export_onnx(model, tmp_path / "m.onnx", cfg, opset=opset)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert_matches(tmp_path / "m.onnx", "torchsae", model, 32, FP32_TOLERANCE)


@pytest.mark.parametrize("layout", ["torchsae", "dfm"])
def test_fp16_graph(tmp_path: Path, layout: str) -> None:
    model, cfg = tiny("liae-ud")
    out = tmp_path / "m.onnx"
    export_onnx(model, out, cfg, layout=layout, dtype="fp16")
    proto = onnx.load(str(out))
    weights = [t for t in proto.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    io_types = {v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}  # float32 interface, Cast nodes inside
    assert "Cast" in {n.op_type for n in proto.graph.node}
    assert read_metadata(out)["dtype"] == "fp16"
    assert_matches(out, layout, model, 32, FP16_TOLERANCE)


@pytest.mark.parametrize(("dtype", "bound"), [("fp32", 2e-6), ("fp16", FP16_TOLERANCE)])
def test_our_dfm_reproduces_deepfacelab(tmp_path: Path, dtype: str, bound: float) -> None:
    """DeepFaceLab's df-ud weights exported by us give DeepFaceLab's own outputs (fp32 within 2e-6)."""
    cfg = ModelConfig(archi="df-ud", resolution=64, ae_dims=32, e_dims=16, d_dims=16, d_mask_dims=16)
    model = SAEHD(cfg).eval()
    nets = {
        "encoder": model.encoder,
        "inter": model.inter,
        "decoder_src": model.decoder_b,
        "decoder_dst": model.decoder_a,
    }
    for name, net in nets.items():
        source = f"new_SAEHD_{name}.npy"
        weights = restricted_loads(gzip.decompress((DFL_MODEL / f"{source}.gz").read_bytes()), source)
        net.load_state_dict(tf_to_state_dict(weights, net, source))
    reference = np.load(DFL_MODEL / "reference_io.npz")
    export_onnx(model, tmp_path / "ours.dfm", cfg, layout="dfm", dtype=dtype, faces=reference["in_face"])
    double = DeepFaceLiveDfm(tmp_path / "ours.dfm")
    for batch in (slice(0, 1), slice(0, 3)):  # batch 1 and 3
        outputs = double.convert(reference["in_face"][batch])
        for got, name in zip(
            outputs, ("out_face_mask", "out_celeb_face", "out_celeb_face_mask"), strict=True
        ):
            assert np.abs(got - reference[name][batch]).max() <= bound


def test_export_leaves_caller_model_alone(tmp_path: Path) -> None:
    model, cfg = tiny("df-ud")
    model.train()
    rng_state = torch.get_rng_state()
    export_onnx(model, tmp_path / "m.onnx", cfg)
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng_state)  # exporting mid-training must not shift the RNG


def test_large_model_uses_one_external_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the 2 GiB limit (lowered here) the export is ``name`` + ``name.data``, verified the same way."""
    monkeypatch.setattr(onnx_module, "PROTOBUF_LIMIT", 1024)
    model, cfg = tiny("liae-ud")
    out = tmp_path / "big.dfm"
    result = export_onnx(model, out, cfg, layout="dfm")
    assert result.external_data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.dfm", "big.dfm.data"]
    assert out.stat().st_size < 100_000 < (tmp_path / "big.dfm.data").stat().st_size
    assert result.size_bytes == out.stat().st_size + (tmp_path / "big.dfm.data").stat().st_size
    onnx.checker.check_model(str(out), full_check=True)
    assert_matches(out, "dfm", model, 32, FP32_TOLERANCE)


@pytest.mark.parametrize("limit", [onnx_module.PROTOBUF_LIMIT, 1024])
def test_failed_verification_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Perturb what ONNX Runtime returned by 1e-3: the real comparison must refuse and write nothing."""
    monkeypatch.setattr(onnx_module, "PROTOBUF_LIMIT", limit)  # single file, and external data
    real_compare = verify_module.compare_outputs

    def perturbed(got, want, names, tolerance, label):
        return real_compare([g + 1e-3 for g in got], want, names, tolerance, label)

    monkeypatch.setattr(verify_module, "compare_outputs", perturbed)
    model, cfg = tiny("df-ud")
    with pytest.raises(VerificationError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "m.onnx", cfg)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary
    previous = tmp_path / "keep.dfm"
    previous.write_bytes(b"previous export")
    with pytest.raises(VerificationError):
        export_onnx(model, previous, cfg, layout="dfm")
    assert previous.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.dfm"]


def test_rejects_old_opset_and_unknown_layout(tmp_path: Path) -> None:
    model, cfg = tiny("df-ud")
    with pytest.raises(ExportError, match="opset 16"):
        export_onnx(model, tmp_path / "m.onnx", cfg, opset=16)
    with pytest.raises(ExportError, match="layout"):
        export_onnx(model, tmp_path / "m.onnx", cfg, layout="nhwc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["torchsae", "dfm"])
def test_full_size_preset_128(tmp_path: Path, layout: str) -> None:
    """The real 128 preset (liae-ud, 82M parameters) still verifies within the fp32 bound."""
    torch.manual_seed(0)
    cfg = preset(128)
    model = SAEHD(cfg).eval()
    out = tmp_path / "sae_128.onnx"
    result = export_onnx(model, out, cfg, layout=layout, faces=real_faces(128))
    assert not result.external_data and result.report.max_diff <= FP32_TOLERANCE
    assert_matches(out, layout, model, 128, FP32_TOLERANCE)


def test_missing_onnx_runtime_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ONNX Runtime (an extra, since the CPU and GPU packages conflict) export says what to install."""
    import builtins

    from torchsae.export.verify import make_session

    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(TorchSAEError, match=r"pip install 'torchsae\[ort\]'") as info:
        make_session(b"")
    assert "\n" not in str(info.value)
