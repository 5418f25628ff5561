"""Build a TensorRT engine from an exported ONNX file and verify it against ONNX Runtime.

Supports TensorRT 10.x and 11.x through the Python API (and 8.x/9.x where the explicit-batch flag
still exists). Precision: TensorRT 11 removed weak typing, so an engine's precision comes from the
graph: export with ``--dtype fp16`` for an fp16 engine. On 10.x ``fp16=True`` additionally allows
fp16 kernels for an fp32 graph (``BuilderFlag.FP16``); on 11.x that request is an error that says
to export an fp16 graph instead.

Verification runs the engine and ONNX Runtime (CPU) on the same random inputs at the profile's
min, opt and max batch. Tolerances (max abs difference on outputs in [0, 1]):
* ``ENGINE_FP32_TOLERANCE`` = 5e-3 for fp32 graphs: TensorRT may pick TF32 convolutions (10-bit
  mantissa) on Ampere and newer, which moves sigmoid outputs by about 1e-3.
* ``ENGINE_FP16_TOLERANCE`` = 3e-2 for fp16 graphs or ``fp16=True``: true fp16 arithmetic, against
  ONNX Runtime's CPU run of the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchsae.export.errors import ExportError, TensorRTUnavailableError
from torchsae.export.verify import compare_outputs, make_session
from torchsae.fileio import atomic_write_bytes

ENGINE_FP32_TOLERANCE = 5e-3
ENGINE_FP16_TOLERANCE = 3e-2


def missing_requirements() -> str | None:
    """``None`` when TensorRT and a CUDA GPU are usable; else one line saying what is missing."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        reason = "not installed" if isinstance(exc, ModuleNotFoundError) else f"cannot load: {exc}"
        missing.append(
            f"TensorRT (Python package 'tensorrt' {reason}; pip install 'torchsae[gpu]', or 'torchsae[gpu-cu12]' with CUDA 12)"
        )
    import torch

    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if not missing:
        return None
    return "build-engine needs " + " and ".join(missing)


def require_tensorrt():
    """Import and return the ``tensorrt`` module, or raise TensorRTUnavailableError (one line)."""
    message = missing_requirements()
    if message:
        raise TensorRTUnavailableError(message)
    import tensorrt

    return tensorrt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass
class EngineResult:
    """What ``build_engine`` wrote and how it compared with ONNX Runtime."""

    path: Path
    tensorrt_version: str
    precision: str
    profile: tuple[int, int, int]
    size_bytes: int
    tolerance: float
    diffs: dict[str, dict[str, float]] = field(default_factory=dict)


def graph_is_fp16(onnx_path: Path) -> bool:
    """Whether the exported graph computes in fp16 (TorchSAE metadata, else fp16 initializers)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "dtype" in meta:
        return meta["dtype"] == "fp16"
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


def build_engine(
    onnx_path: str | Path,
    output: str | Path,
    *,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    timing_cache: str | Path | None = None,
    fp16: bool = False,
    workspace_gib: float | None = None,
    tolerance: float | None = None,
) -> EngineResult:
    """Build, verify against ONNX Runtime, then atomically write a serialized engine to ``output``."""
    trt = require_tensorrt()
    onnx_path, output = Path(onnx_path), Path(output)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(
            f"{output}: need 1 <= min-batch <= opt-batch <= max-batch, got {min_batch}/{opt_batch}/{max_batch}"
        )
    major = trt_major(trt)
    graph_fp16 = graph_is_fp16(onnx_path)
    if fp16 and not graph_fp16 and major >= 11:
        raise ExportError(
            f"{onnx_path}: TensorRT {trt.__version__} takes precision from the graph; "
            "export with --dtype fp16 instead of asking build-engine for fp16"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    weak_fp16 = fp16 and not graph_fp16
    if hasattr(creation, "STRONGLY_TYPED") and not weak_fp16:
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    engine_bytes = bytes(serialized)
    precision = "fp16" if graph_fp16 or fp16 else "fp32"
    bound = (
        tolerance
        if tolerance is not None
        else (ENGINE_FP16_TOLERANCE if precision == "fp16" else ENGINE_FP32_TOLERANCE)
    )
    batches = sorted({min_batch, opt_batch, max_batch})
    diffs = verify_engine(engine_bytes, onnx_path, batches, bound, label=str(output))
    atomic_write_bytes(output, engine_bytes)
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return EngineResult(
        output,
        str(trt.__version__),
        precision,
        (min_batch, opt_batch, max_batch),
        len(engine_bytes),
        bound,
        diffs,
    )


class EngineRunner:
    """Runs a serialized engine on host float32 arrays; buffers are torch CUDA tensors."""

    def __init__(self, engine_bytes: bytes) -> None:
        import torch

        trt = require_tensorrt()
        self._trt, self._torch = trt, torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ExportError(
                "TensorRT could not deserialize the engine (built by another TensorRT version?)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]

    def run_device(self, inputs: dict[str, object]) -> dict[str, object]:
        """Run on CUDA tensors (no host copies); returns CUDA tensors by output name."""
        torch, trt = self._torch, self._trt
        for name, tensor in inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT engine execution failed")
        stream.synchronize()
        return outputs

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on host arrays (copied to the GPU and back); returns float32 arrays by name."""
        torch = self._torch
        device = {n: torch.from_numpy(np.ascontiguousarray(a)).cuda() for n, a in inputs.items()}
        return {n: t.float().cpu().numpy() for n, t in self.run_device(device).items()}


def verify_engine(
    engine_bytes: bytes, onnx_path: Path, batches: list[int], tolerance: float, label: str
) -> dict[str, dict[str, float]]:
    """Engine vs ONNX Runtime (CPU) on random faces at each batch size; raises VerificationError."""
    session = make_session(onnx_path)
    runner = EngineRunner(engine_bytes)
    input_meta = session.get_inputs()[0]
    out_names = tuple(o.name for o in session.get_outputs())
    rng = np.random.default_rng(0)
    diffs = {}
    for batch in batches:
        feed = rng.random((batch, *input_meta.shape[1:]), dtype=np.float32)
        want = session.run(None, {input_meta.name: feed})
        got_by_name = runner({input_meta.name: feed})
        got = [got_by_name[name] for name in out_names]
        diffs[f"batch_{batch}"] = compare_outputs(got, want, out_names, tolerance, f"{label} [batch {batch}]")
    return diffs
