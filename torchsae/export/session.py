"""The ONNX Runtime session factory that verification, the .dfm contract check and the benchmarks share.

Why its own module: ``export.layouts`` (DeepFaceLive's loading rules) and ``export.verify`` (comparing
a graph with PyTorch) both open sessions; with the factory here neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchsae.export.errors import ExportError


def cpu_cores() -> int:
    """Cores this process may use (affinity-aware where the platform tells us)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def make_session(
    model: str | Path | bytes,
    providers: list[str] | None = None,
    threads: int | None = None,
    spin: bool = False,
):
    """An ONNX Runtime session with the settings we benchmark and verify with.

    Intra-op threads = the usable cores and every graph optimisation enabled: the defaults a user
    deploying the model should copy, and the ones ``benchmarks/export_latency.py`` measures.
    Spinning worker threads cut latency on an idle machine but waste whole cores when the machine
    is shared (a training run, a test suite), so only the benchmark turns it on.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:  # not in install_requires: onnxruntime and onnxruntime-gpu conflict
        raise ExportError(
            "exports are verified with ONNX Runtime, which is not installed: "
            "pip install 'torchsae[ort]' (or 'torchsae[gpu]' / 'torchsae[gpu-cu12]' on CUDA 13 / 12 machines)"
        ) from exc

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_cores()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(
            source, sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        name = source if isinstance(source, str) else "<onnx bytes>"
        raise ExportError(f"{name}: ONNX Runtime cannot load the model: {exc}") from exc
