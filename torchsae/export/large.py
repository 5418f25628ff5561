"""ONNX models over protobuf's 2 GiB limit: one external-data file beside the graph.

Why: ``--model-size 384`` in fp32 holds about 3 GiB of weights, which one protobuf message cannot
carry. ONNX's answer is external data; we keep it to exactly two files, ``<name>`` (the graph) and
``<name>.data`` (every weight), so the pair is easy to copy. ONNX Runtime (and DeepFaceLive, which
loads through it) finds the data file next to the graph.

Both files are staged in a temporary folder beside the output, verified there, fsynced, and then
renamed into place: data first, graph last, so the graph at the output path never points at a
missing or half-written data file.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchsae.fileio import fsync_dir, fsync_file, replace

PROTOBUF_LIMIT = 2**31 - 2**24  # 2 GiB less 16 MiB of headroom for the graph itself


def tensor_bytes(proto) -> int:
    """Bytes of weight data in ``proto`` (initializers), without serializing it."""
    total = 0
    for tensor in proto.graph.initializer:
        total += len(tensor.raw_data) or 4 * (
            len(tensor.float_data) + len(tensor.int32_data) + 2 * len(tensor.int64_data)
        )
    return total


def data_name(output: Path) -> str:
    """The external-data file name for the graph at ``output``."""
    return f"{output.name}.data"


def stage_external(proto, staged: Path) -> Path:
    """Save ``proto`` as ``staged`` plus ``staged.parent / data_name(staged)``; returns ``staged``."""
    import onnx

    onnx.save_model(
        proto,
        str(staged),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name(staged),
        size_threshold=1024,
    )
    return staged


def publish_external(staged: Path, output: Path) -> int:
    """Move a verified staged pair to ``output`` (data first); returns the total bytes."""
    staged_data = staged.parent / data_name(staged)
    umask = os.umask(0)
    os.umask(umask)
    for path in (staged_data, staged):
        os.chmod(path, 0o666 & ~umask)  # the two files get the same, ordinary permissions
        fsync_file(path)  # opened for writing: Windows cannot fsync a read-only handle
    replace(staged_data, output.parent / data_name(output))
    replace(staged, output)
    fsync_dir(output.parent)
    return output.stat().st_size + (output.parent / data_name(output)).stat().st_size
