"""TensorRT engine building: the missing-dependency path here, the real build where a GPU is present."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchsae.config import ModelConfig
from torchsae.export import TensorRTUnavailableError
from torchsae.export import tensorrt as trt_export
from torchsae.export.onnx import export_onnx
from torchsae.export.verify import make_session
from torchsae.models import SAEHD


def test_missing_tensorrt_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    message = trt_export.missing_requirements()
    assert message is not None and "TensorRT" in message and "\n" not in message


def test_missing_gpu_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = trt_export.missing_requirements()
    assert message is not None and "CUDA GPU" in message and "\n" not in message


def test_build_engine_raises_when_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailableError, match="CUDA GPU"):
        trt_export.build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine")
    assert not (tmp_path / "x.engine").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_build_and_run_engine(tmp_path: Path, dtype: str) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.manual_seed(0)
    cfg = ModelConfig(archi="liae-ud", resolution=64, ae_dims=32, e_dims=16, d_dims=16, d_mask_dims=16)
    onnx_path = tmp_path / "sae.dfm"
    export_onnx(SAEHD(cfg), onnx_path, cfg, layout="dfm", dtype=dtype)
    cache = tmp_path / "timing.cache"
    result = trt_export.build_engine(
        onnx_path, tmp_path / "sae.engine", min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache
    )
    assert (tmp_path / "sae.engine").stat().st_size == result.size_bytes and cache.stat().st_size > 0
    assert set(result.diffs) == {"batch_1", "batch_2", "batch_4"}
    runner = trt_export.EngineRunner((tmp_path / "sae.engine").read_bytes())
    session = make_session(onnx_path)
    face = np.random.default_rng(5).random((3, 64, 64, 3), dtype=np.float32)
    want = session.run(None, {"in_face:0": face})  # DeepFaceLive's literal input name
    got = runner({"in_face:0": face})
    for output, ref in zip(session.get_outputs(), want, strict=True):
        assert got[output.name].shape == ref.shape
        assert np.abs(got[output.name] - ref).max() <= result.tolerance
