"""Export a TorchSAE model to ONNX (layout ``torchsae`` or DeepFaceLive ``dfm``), verified first.

The graph is the inference path of spec §2.4: Encoder + Inter + Decoder B on an A face (DeepFaceLab's
``pred_src_dst``), plus decoder B's swap mask and decoder A's mask of the input face. It takes a
dynamic batch axis and a fixed height and width.

Exporter choice (measured with torch 2.14): the ``torch.export`` based exporter (``dynamo=True``)
emits opset 18 natively and its down-conversion to 17 fails on ``ReduceMean`` (axes became an
input in 18), silently leaving an opset-18 file. So opsets up to 17 use the TorchScript exporter
(``dynamo=False``) and opset 18+ uses ``dynamo=True``, falling back to the other path if the first
one fails. Either way the written file must declare exactly the opset asked for, and every node's op
must exist at that opset (``check_ops_exist``).

Opsets: layout ``torchsae`` defaults to 17 (17 or newer); layout ``dfm`` defaults to 12, what
DeepFaceLab's own tf2onnx export writes, and refuses anything above 16, because DeepFaceLive's
release builds pin ONNX Runtime 1.11, which cannot read newer opsets (spec §6). The DCR
depth-to-space of the upscalers is a reshape/transpose in the model and exports as Reshape +
Transpose (no DepthToSpace node), which every runtime handles.

Nothing reaches the output path until the graph has passed ``onnx.checker`` and ONNX Runtime has
matched PyTorch (``verify.py``). The exporters write into a temporary folder beside the output; the
verified bytes are then written through ``torchsae.fileio.atomic_write_bytes`` (temp name, fsync,
rename). A model over protobuf's 2 GiB limit (``--model-size 384`` in fp32) becomes ``<name>`` plus
one external-data file ``<name>.data`` (``large.py``). A failure raises a TorchSAEError and leaves
no file and no temporary behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import torchsae
from torchsae.config import ExportConfig, ModelConfig
from torchsae.errors import ConfigError
from torchsae.export.errors import ExportError, VerificationError
from torchsae.export.large import PROTOBUF_LIMIT, publish_external, stage_external, tensor_bytes
from torchsae.export.layouts import LAYOUTS, SwapGraph, check_dfm_contract
from torchsae.export.verify import VerifyReport, verify_onnx
from torchsae.fileio import atomic_write_bytes

BATCH_AXIS = "batch"


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and how it was checked."""

    path: Path
    layout: str
    dtype: str
    opset: int
    exporter: str
    size_bytes: int
    metadata: dict[str, str]
    report: VerifyReport
    external_data: bool = False


def export_onnx(
    model: nn.Module,
    output: str | Path,
    model_cfg: ModelConfig,
    *,
    layout: str = "torchsae",
    opset: int | None = None,
    dtype: str = "fp32",
    step: int | None = None,
    faces: np.ndarray | None = None,
) -> ExportResult:
    """Export ``model`` (an ``SAEHD`` with ``.swap``) to ``output``, verify it, then write it atomically.

    The caller's model keeps its device and train/eval mode (a model on a GPU is copied to the CPU).
    ``faces`` are real faces (N, H, W, 3) BGR in [0, 1] to verify on besides the random inputs;
    ``step`` is the training step recorded in the metadata. ``opset`` None is the layout's default
    (17 for ``torchsae``; 12 for ``dfm``, which also refuses anything above 16: DeepFaceLive's
    ONNX Runtime 1.11 cannot read it).
    """
    output = Path(output)
    try:
        export_cfg = ExportConfig(opset=opset, layout=layout, dtype=dtype)
        export_cfg.validate()
    except ConfigError as exc:
        raise ExportError(f"{output}: {exc}") from exc
    opset = export_cfg.resolved_opset
    was_training = model.training
    on_cpu = all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    cpu_model = model if on_cpu else copy.deepcopy(model).cpu()  # never move the caller's model
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent) as tmp:
            return _export_in(
                cpu_model.eval(), output, Path(tmp), model_cfg, layout, opset, dtype, step, faces
            )
    finally:
        model.train(was_training)


def _export_in(
    model: nn.Module,
    output: Path,
    workdir: Path,
    model_cfg: ModelConfig,
    layout: str,
    opset: int,
    dtype: str,
    step: int | None,
    faces: np.ndarray | None,
) -> ExportResult:
    """Trace, stamp, check and verify inside ``workdir``; publish to ``output`` only at the end."""
    resolution = model_cfg.resolution
    reference = SwapGraph(model, layout)
    if dtype == "fp16":
        graph = SwapGraph(copy.deepcopy(model).half(), layout, torch.float16).eval()
    else:
        graph = reference
    proto, exporter = trace_to_onnx(graph, layout, resolution, opset, str(output), workdir)
    metadata = model_metadata(model_cfg, layout, dtype, opset, step, exporter)
    finish_proto(proto, metadata)
    pin_io_shapes(proto, layout, resolution)
    check_ops_exist(proto, str(output))
    external = tensor_bytes(proto) >= PROTOBUF_LIMIT
    if external:
        staged = stage_external(proto, workdir / output.name)
        check_proto(proto, opset, str(output), path=str(staged))
        source: bytes | str = str(staged)
    else:
        source = check_proto(proto, opset, str(output))
    del proto  # a multi-GiB proto need not live on through verification
    report = verify_onnx(source, reference, layout, resolution, dtype, faces, label=str(output))
    if layout == "dfm":
        check_dfm_contract(source)
    if isinstance(source, bytes):
        atomic_write_bytes(output, source)
        size = len(source)
    else:
        size = publish_external(Path(source), output)
    return ExportResult(output, layout, dtype, opset, exporter, size, metadata, report, external)


def trace_to_onnx(graph: nn.Module, layout: str, resolution: int, opset: int, label: str, workdir: Path):
    """Trace ``graph`` to an ``onnx.ModelProto`` at ``opset``; returns (proto, exporter name).

    The exporters write into ``workdir`` (switching to external data by themselves for models over
    2 GiB); the proto is loaded back with its weights.
    """
    spec = LAYOUTS[layout]
    # batch 2: torch.export specialises sizes 0 and 1; a private generator leaves the caller's RNG alone
    sample = torch.rand(spec.input_shape(2, resolution), generator=torch.Generator().manual_seed(0))
    return trace_io(graph, sample, spec.input_name, spec.output_names, opset, label, workdir)


def trace_io(
    graph: nn.Module,
    sample: torch.Tensor,
    input_name: str,
    output_names: tuple[str, ...],
    opset: int,
    label: str,
    workdir: Path,
):
    """:func:`trace_to_onnx` for any one-input graph: ``sample`` (batch 2, the batch axis dynamic) fed
    as ``input_name`` (also the name of ``graph.forward``'s argument), outputs named ``output_names``."""
    order = ("torchscript", "dynamo") if opset <= 17 else ("dynamo", "torchscript")
    errors = []
    for exporter in order:
        try:
            proto = _export_with(exporter, graph, sample, input_name, output_names, opset, workdir / exporter)
        except Exception as exc:  # exporters raise many types; try the other path, report both
            errors.append(f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        got = _default_opset(proto)
        if got == opset:
            return proto, exporter
        errors.append(f"{exporter}: produced opset {got} instead of {opset}")
    raise ExportError(f"{label}: could not export opset {opset} ({'; '.join(errors)})")


def _export_with(
    exporter: str,
    graph: nn.Module,
    sample: torch.Tensor,
    input_name: str,
    output_names: tuple[str, ...],
    opset: int,
    folder: Path,
):
    import onnx

    folder.mkdir()
    path = str(folder / "graph.onnx")
    names = dict(input_names=[input_name], output_names=list(output_names), opset_version=opset)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {name: {0: BATCH_AXIS} for name in (input_name, *output_names)}
            torch.onnx.export(
                graph, (sample,), path, dynamo=False, dynamic_axes=axes, do_constant_folding=True, **names
            )
        else:
            batch = torch.export.Dim(BATCH_AXIS, min=1, max=4096)
            program = torch.onnx.export(
                graph,
                (sample,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                verbose=False,
                optimize=True,
                **names,
            )
            program.save(path)
    return onnx.load(path)


def _default_opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def model_metadata(
    model_cfg: ModelConfig, layout: str, dtype: str, opset: int, step: int | None, exporter: str
) -> dict[str, str]:
    """The model facts stored in the ONNX ``metadata_props`` (all values are strings)."""
    spec = LAYOUTS[layout]
    return {
        "torchsae_version": torchsae.__version__,
        "archi": model_cfg.archi,
        "resolution": str(model_cfg.resolution),
        "face_type": model_cfg.face_type,
        "ae_dims": str(model_cfg.ae_dims),
        "e_dims": str(model_cfg.resolved_e_dims),
        "d_dims": str(model_cfg.resolved_d_dims),
        "d_mask_dims": str(model_cfg.resolved_d_mask_dims),
        "layout": layout,
        **io_facts(spec.channels_last, dtype, opset),
        "exporter": exporter,
        "training_step": "" if step is None else str(int(step)),
        "input": spec.input_name,
        "outputs": ",".join(spec.output_names),
        "swap": "A face in (DeepFaceLab dst) -> B identity out (src): Encoder + Inter + Decoder B",
    }


def io_facts(channels_last: bool, dtype: str, opset: int) -> dict[str, str]:
    """The metadata every TorchSAE ONNX file states about its tensors (edges float32 BGR in [0, 1])."""
    return {
        "channel_order": "BGR",
        "value_range": "0..1",
        "tensor_layout": "NHWC" if channels_last else "NCHW",
        "dtype": dtype,
        "io_dtype": "float32",
        "opset": str(opset),
    }


def finish_proto(
    proto,
    metadata: dict[str, str],
    name: str = "SAEHD",
    doc: str = "TorchSAE SAEHD face swap: A face in, B identity out (BGR, [0, 1])",
) -> None:
    """Stamp producer, graph name and metadata onto the traced model."""
    proto.producer_name = "torchsae"
    proto.producer_version = torchsae.__version__
    proto.graph.name = name
    proto.doc_string = doc
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def pin_io_shapes(proto, layout: str, resolution: int) -> None:
    """Declare the contract's shapes on the graph inputs and outputs: batch symbolic, the rest static.

    The TorchScript exporter leaves output H and W symbolic; DeepFaceLive and TensorRT read static
    sizes from the declared shapes, and ``onnx.checker``'s shape inference then checks that the
    graph really produces them.
    """
    spec = LAYOUTS[layout]
    pin_shapes(proto, [spec.input_shape(1, resolution)], spec.output_shapes(1, resolution))


def pin_shapes(proto, inputs, outputs) -> None:
    """Declare each graph input's and output's shape (batch symbolic, the rest of ``shape[1:]`` static)."""
    declared = list(zip(proto.graph.input, inputs, strict=True))
    declared += list(zip(proto.graph.output, outputs, strict=True))
    for value, shape in declared:
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        batch = dims.add()
        batch.dim_param = BATCH_AXIS
        for size in shape[1:]:
            dims.add().dim_value = size


def check_ops_exist(proto, label: str) -> None:
    """Every node's op must exist at the opset its graph (or function) imports for the op's domain.

    ``onnx.checker`` does not always catch an op newer than the declared opset (an exporter that
    stamps opset 12 on a graph using an opset-18 op); a runtime pinned to that opset (DeepFaceLive's
    ONNX Runtime 1.11 reads up to 16) then refuses the file. Checked with ``onnx.defs.get_schema``
    for every node, including those in subgraphs and local functions. Raises VerificationError.
    """
    import onnx
    from onnx import defs

    def versions(opset_import) -> dict[str, int]:
        return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in opset_import}

    local = {(f.domain, f.name) for f in proto.functions}

    def walk(nodes, imported: dict[str, int], where: str) -> None:
        for node in nodes:
            domain = "" if node.domain == "ai.onnx" else node.domain
            if (node.domain, node.op_type) not in local:
                if domain not in imported:
                    raise VerificationError(
                        f"{label}: {where} node {node.name!r} ({node.op_type}) uses domain "
                        f"{domain!r}, which the model does not import"
                    )
                try:
                    defs.get_schema(node.op_type, max_inclusive_version=imported[domain], domain=domain)
                except defs.SchemaError:
                    raise VerificationError(
                        f"{label}: {where} node {node.name!r} uses op {node.op_type!r}, which does not exist "
                        f"at opset {imported[domain]} of domain {domain or 'ai.onnx'!r}"
                    ) from None
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node, imported, where)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for graph in attr.graphs:
                        walk(graph.node, imported, where)

    model_opsets = versions(proto.opset_import)
    walk(proto.graph.node, model_opsets, "graph")
    for function in proto.functions:
        walk(
            function.node, {**model_opsets, **versions(function.opset_import)}, f"function {function.name!r}"
        )


def check_proto(proto, opset: int, label: str, path: str | None = None) -> bytes:
    """Run ``onnx.checker`` (full check, with shape inference); return the serialized bytes.

    With ``path`` (a model staged with external data) the checker reads the file instead, as it
    must for models over 2 GiB, and nothing is serialized.
    """
    import onnx

    if _default_opset(proto) != opset:
        raise VerificationError(f"{label}: graph declares opset {_default_opset(proto)}, asked for {opset}")
    try:
        onnx.checker.check_model(path if path is not None else proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError and shape-inference errors
        raise VerificationError(
            f"{label}: onnx.checker rejects the graph: {str(exc).splitlines()[0]}"
        ) from exc
    return b"" if path is not None else proto.SerializeToString()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (without loading the weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
