"""Modular parts as ONNX: an encoder (face -> code) or a decoder (code -> image, mask) on its own, and
``compose_onnx`` joining two such files into one swap graph (layout ``torchsae`` or DeepFaceLive ``dfm``).

Why part files: a bank of per-identity encoders and decoders that share one latent can serve any X->Y
swap from N + N files instead of N * N exported models. Each part file states its latent
(``LatentSpec.to_dict()`` as JSON in the ONNX ``metadata_props`` key ``latent``); ``compose_onnx``
reads both and refuses, in one line and before writing anything, parts whose latents differ.

Contracts (all float32 at the graph edges, BGR in [0, 1], dynamic batch):

* encoder part: ``face`` (N,3,R,R) -> ``code`` (N,C,S,S)
* decoder part: ``code`` (N,C,S,S) -> ``image`` (N,3,R,R), ``mask`` (N,1,R,R)
* composed, layout ``torchsae``: ``face`` -> ``swapped``, ``swapped_mask``, ``face_mask`` (the
  ``torchsae`` export layout, so ``torchsae swap``/``merge`` read it as they read a whole-model export)
* composed, layout ``dfm``: ``in_face:0`` (N,R,R,3) -> ``out_face_mask:0``, ``out_celeb_face:0``,
  ``out_celeb_face_mask:0`` (DeepFaceLive's contract, checked with ``check_dfm_contract``)

The face mask (DeepFaceLab takes it from decoder A: where the *input* face is) comes from an optional
third file, ``face_decoder`` (the source identity's decoder, whose mask head is used); without it the
decoder's own swap mask serves as the face mask too.

The modules are plain ``nn.Module``s: this layer sits below ``torchsae.modular`` and never imports it;
the latent contract lives in ``torchsae.models.latent``. Part exports are verified with ONNX Runtime
against PyTorch (``verify`` tolerances) and written atomically; the composed graph is verified against
running its part files one after the other in ONNX Runtime, and also against PyTorch modules when the
caller passes them (``modules``).
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import torchsae
from torchsae.export.errors import ExportError, VerificationError
from torchsae.export.large import PROTOBUF_LIMIT, tensor_bytes
from torchsae.export.layouts import DFM_MAX_OPSET, LAYOUTS, SwapGraph, check_dfm_contract
from torchsae.export.onnx import (
    check_ops_exist,
    check_proto,
    finish_proto,
    io_facts,
    pin_io_shapes,
    pin_shapes,
    read_metadata,
    trace_io,
)
from torchsae.export.session import make_session
from torchsae.export.verify import VerifyReport, tolerance_for, verification_inputs, verify_session
from torchsae.fileio import atomic_write_bytes
from torchsae.models.latent import LatentSpec, check_compatible

PARTS = {"encoder": ("face", ("code",)), "decoder": ("code", ("image", "mask"))}
DTYPES = ("fp32", "fp16")
MIN_OPSET = 11


@dataclass
class PartExport:
    """What ``export_encoder_onnx`` / ``export_decoder_onnx`` wrote and how it was checked."""

    path: Path
    part: str
    spec: LatentSpec
    opset: int
    exporter: str
    size_bytes: int
    metadata: dict[str, str]
    report: VerifyReport


@dataclass(frozen=True)
class PartInfo:
    """A part file's declared facts, read from its metadata."""

    path: Path
    part: str
    spec: LatentSpec
    opset: int
    dtype: str
    metadata: dict[str, str]


@dataclass
class ComposeResult:
    path: Path
    layout: str
    opset: int
    size_bytes: int
    metadata: dict[str, str]
    report: VerifyReport  # against the part files run one after the other
    torch_report: VerifyReport | None  # against the PyTorch modules, when given


class _PartGraph(nn.Module):
    """One part traced as its own graph: float32 edges, ``compute_dtype`` inside (as ``SwapGraph``)."""

    def __init__(self, module: nn.Module, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.module = module
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor):
        out = self.module(x.to(self.compute_dtype))
        return tuple(t.float() for t in (out if isinstance(out, tuple | list) else (out,)))


class PartsSwap(nn.Module):
    """The PyTorch composition a composed graph computes: ``decoder(encoder(face))``.

    ``swap(face) -> (image, mask, face_mask)`` like ``SAEHD.swap``, so ``SwapGraph`` arranges it per
    layout; ``face_mask`` is ``face_decoder``'s mask when given, else the decoder's mask.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, face_decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder, self.decoder, self.face_decoder = encoder, decoder, face_decoder

    def swap(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        code = self.encoder(face)
        image, mask = self.decoder(code)
        face_mask = mask if self.face_decoder is None else self.face_decoder(code)[1]
        return image, mask, face_mask


def export_encoder_onnx(encoder: nn.Module, spec: LatentSpec, path: str | Path, **options) -> PartExport:
    """Export ``encoder`` (face NCHW BGR [0,1] -> code) as ``face`` -> ``code`` (options: ``export_part_onnx``)."""
    return export_part_onnx("encoder", encoder, spec, path, **options)


def export_decoder_onnx(decoder: nn.Module, spec: LatentSpec, path: str | Path, **options) -> PartExport:
    """Export ``decoder`` (code -> (image, mask)) as ``code`` -> ``image``, ``mask`` (options: ``export_part_onnx``)."""
    return export_part_onnx("decoder", decoder, spec, path, **options)


def part_metadata(
    part: str, spec: LatentSpec, opset: int, dtype: str, exporter: str, extra: dict[str, str] | None
) -> dict[str, str]:
    """The facts a part file carries in ``metadata_props`` (the caller's ``extra`` cannot override them)."""
    input_name, output_names = PARTS[part]
    own = {
        "torchsae_version": torchsae.__version__,
        "part": part,
        "latent": json.dumps(spec.to_dict(), sort_keys=True),
        "latent_id": spec.id,
        "resolution": str(spec.resolution),
        "face_type": spec.face_type,
        **io_facts(False, dtype, opset),
        "exporter": exporter,
        "input": input_name,
        "outputs": ",".join(output_names),
    }
    return {**{str(k): str(v) for k, v in (extra or {}).items()}, **own}


def _shapes(part: str, spec: LatentSpec, batch: int) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    face, mask, code = (
        (batch, 3, spec.resolution, spec.resolution),
        (batch, 1, spec.resolution, spec.resolution),
        (
            batch,
            *spec.shape,
        ),
    )
    return (face, [code]) if part == "encoder" else (code, [face, mask])


def export_part_onnx(
    part: str,
    module: nn.Module,
    spec: LatentSpec,
    path: str | Path,
    *,
    opset: int = 17,
    dtype: str = "fp32",
    metadata: dict[str, str] | None = None,
    faces: np.ndarray | None = None,
) -> PartExport:
    """Export one ``part`` ("encoder" or "decoder") of latent ``spec``; verified, then written atomically.

    ``metadata`` adds string entries (e.g. ``identity``) to the file's ``metadata_props``; ``faces``
    (N,H,W,3 BGR [0,1]) are real faces an encoder is verified on besides random ones. ``dtype`` "fp16"
    computes in half precision inside float32 edges (tolerance 1e-2). The module is copied, never
    moved or switched to eval mode.
    """
    if part not in PARTS:
        raise ExportError(f"part {part!r}: choose one of {', '.join(PARTS)}")
    output = Path(path)
    label = str(output)
    if dtype not in DTYPES:
        raise ExportError(f"{label}: dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"{label}: opset {opset!r}; part exports need opset {MIN_OPSET} or newer")
    input_name, output_names = PARTS[part]
    in_shape, out_shapes = _shapes(part, spec, 2)
    reference = _PartGraph(copy.deepcopy(module).cpu().float().eval())  # never touch the caller's module
    graph = (
        _PartGraph(copy.deepcopy(reference.module).half(), torch.float16) if dtype == "fp16" else reference
    )
    rng = torch.Generator().manual_seed(0)
    sample = (
        torch.rand(in_shape, generator=rng) if part == "encoder" else torch.randn(in_shape, generator=rng)
    )
    with torch.no_grad():
        got = reference(sample)
    if [tuple(t.shape) for t in got] != out_shapes:
        raise ExportError(
            f"{label}: the {part} gives {[tuple(t.shape) for t in got]} for input {in_shape}, but latent "
            f"{spec.id} means {out_shapes}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent) as tmp:
        proto, exporter = trace_io(graph, sample, input_name, output_names, opset, label, Path(tmp))
    metadata = part_metadata(part, spec, opset, dtype, exporter, metadata)
    finish_proto(proto, metadata, f"torchsae_{part}", f"TorchSAE modular {part} part, latent {spec.id}")
    pin_shapes(proto, [in_shape], out_shapes)
    check_ops_exist(proto, label)
    if tensor_bytes(proto) >= PROTOBUF_LIMIT:
        raise ExportError(f"{label}: the {part} is over protobuf's 2 GiB; part exports do not split weights")
    data = check_proto(proto, opset, label)
    session = make_session(data)
    names = ([i.name for i in session.get_inputs()], tuple(o.name for o in session.get_outputs()))
    if names != ([input_name], output_names):
        raise VerificationError(f"{label}: graph names {names} are not {input_name} -> {list(output_names)}")
    report = verify_session(
        session, reference, input_name, _part_inputs(part, spec, faces), tolerance_for(dtype), label
    )
    atomic_write_bytes(output, data)
    return PartExport(output, part, spec, opset, exporter, len(data), metadata, report)


def _part_inputs(part: str, spec: LatentSpec, faces: np.ndarray | None) -> dict[str, np.ndarray]:
    """Random faces (and real ones) for an encoder; random normal codes of batch 3 and 1 for a decoder."""
    if part == "encoder":
        return {
            k: np.ascontiguousarray(v.transpose(0, 3, 1, 2))
            for k, v in verification_inputs(spec.resolution, faces).items()
        }
    rng = np.random.default_rng(0)
    return {f"random_code_b{n}": rng.standard_normal((n, *spec.shape), dtype=np.float32) for n in (3, 1)}


def read_part(path: str | Path, part: str | None = None) -> PartInfo:
    """A part file's kind, latent spec, opset and metadata; ``part`` set: refuse any other kind."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such part file")
    try:
        meta = read_metadata(path)
    except Exception as exc:  # onnx raises DecodeError and friends for a file that is not ONNX
        raise ExportError(f"{path}: not an ONNX file ({type(exc).__name__})") from exc
    kind = meta.get("part")
    if kind not in PARTS:
        raise ExportError(f"{path}: not a TorchSAE part export (metadata 'part' is {kind!r})")
    if part is not None and kind != part:
        raise ExportError(f"{path}: is a {kind} part, expected a {part}")
    try:
        data = json.loads(meta["latent"])
    except (KeyError, ValueError) as exc:
        raise ExportError(f"{path}: carries no readable latent spec") from exc
    spec = LatentSpec.from_dict(data, source=str(path))
    return PartInfo(path, kind, spec, int(meta.get("opset", "0")), meta.get("dtype", "fp32"), meta)


class _PartChain(nn.Module):
    """The part files run one after the other in ONNX Runtime, as a ``.swap`` for ``SwapGraph``."""

    def __init__(self, encoder: PartInfo, decoder: PartInfo, face_decoder: PartInfo | None) -> None:
        super().__init__()
        self.sessions = [make_session(str(p.path)) if p else None for p in (encoder, decoder, face_decoder)]

    def swap(self, face: torch.Tensor):
        enc, dec, face_dec = self.sessions
        (code,) = enc.run(None, {"face": face.float().numpy()})
        image, mask = dec.run(None, {"code": code})
        face_mask = mask if face_dec is None else face_dec.run(None, {"code": code})[1]
        return tuple(torch.from_numpy(np.ascontiguousarray(t)) for t in (image, mask, face_mask))


def compose_onnx(
    encoder_path: str | Path,
    decoder_path: str | Path,
    output: str | Path,
    layout: str = "torchsae",
    face_decoder_path: str | Path | None = None,
    modules: Sequence[nn.Module] | None = None,
    faces: np.ndarray | None = None,
) -> ComposeResult:
    """Join an encoder part and a decoder part into one swap graph at ``output`` (see the module doc).

    Refuses, in one line and before writing anything, parts of the wrong kind, latents that differ
    (``check_compatible``), different opsets, or (layout ``dfm``) an opset DeepFaceLive cannot read.
    ``modules`` = (encoder, decoder[, face_decoder]) PyTorch modules to verify against besides the
    part files; ``faces`` (N,H,W,3 BGR [0,1]) are real faces to verify on.
    """
    from onnx.compose import merge_models

    output = Path(output)
    label = str(output)
    if layout not in LAYOUTS:
        raise ExportError(f"{label}: layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    enc, dec = read_part(encoder_path, "encoder"), read_part(decoder_path, "decoder")
    face_dec = None if face_decoder_path is None else read_part(face_decoder_path, "decoder")
    for other in (dec, face_dec):
        if other is not None:
            check_compatible(enc.spec, other.spec, str(enc.path), str(other.path))
    opsets = {p.opset for p in (enc, dec, face_dec) if p is not None}
    if len(opsets) != 1:
        raise ExportError(
            f"{label}: the parts were exported at different opsets {sorted(opsets)}; export them alike"
        )
    opset = opsets.pop()
    if layout == "dfm" and opset > DFM_MAX_OPSET:
        raise ExportError(
            f"{label}: parts at opset {opset}; DeepFaceLive reads opsets up to {DFM_MAX_OPSET}: export the parts "
            f"with opset {DFM_MAX_OPSET} or lower"
        )
    dtype = "fp16" if any(p.dtype == "fp16" for p in (enc, dec, face_dec) if p is not None) else "fp32"
    try:
        joined = merge_models(
            _bare(enc.path),
            _bare(dec.path),
            io_map=[("code", "code")],
            prefix1="encoder/",
            prefix2="decoder/",
            outputs=["encoder/code", "decoder/image", "decoder/mask"],
        )
        face_mask = "decoder/mask"
        if face_dec is not None:
            joined = merge_models(
                joined,
                _bare(face_dec.path),
                io_map=[("encoder/code", "code")],
                prefix2="face_decoder/",
                outputs=["decoder/image", "decoder/mask", "face_decoder/mask"],
            )
            face_mask = "face_decoder/mask"
        else:
            _drop_output(joined, "encoder/code")
    except ValueError as exc:  # onnx.compose's refusals (IR versions, name clashes)
        raise ExportError(f"{label}: cannot join the parts: {str(exc).splitlines()[0]}") from exc
    spec = LAYOUTS[layout]
    sources = {"swapped": "decoder/image", "swapped_mask": "decoder/mask", "face_mask": face_mask}
    sources.update(
        {
            "out_face_mask:0": face_mask,
            "out_celeb_face:0": "decoder/image",
            "out_celeb_face_mask:0": "decoder/mask",
        }
    )
    _set_io(
        joined,
        spec.input_name,
        "encoder/face",
        [(name, sources[name]) for name in spec.output_names],
        spec.channels_last,
    )
    metadata = _composed_metadata(enc, dec, face_dec, layout, opset, dtype)
    finish_proto(
        joined, metadata, f"torchsae_composed_{layout}", f"TorchSAE composed swap, latent {enc.spec.id}"
    )
    joined.producer_name, joined.producer_version = "torchsae", torchsae.__version__
    pin_io_shapes(joined, layout, enc.spec.resolution)
    check_ops_exist(joined, label)
    data = check_proto(joined, opset, label)
    tolerance = tolerance_for(dtype)
    session = make_session(data)
    sets = {k: spec.to_input(v) for k, v in verification_inputs(enc.spec.resolution, faces).items()}
    report = verify_session(
        session, SwapGraph(_PartChain(enc, dec, face_dec), layout), spec.input_name, sets, tolerance, label
    )
    torch_report = None
    if modules is not None:
        parts = [copy.deepcopy(m).cpu().float().eval() for m in modules]
        reference = SwapGraph(PartsSwap(*parts), layout)
        torch_report = verify_session(
            session, reference, spec.input_name, sets, tolerance, f"{label} (PyTorch)"
        )
    if layout == "dfm":
        check_dfm_contract(data)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, data)
    return ComposeResult(output, layout, opset, len(data), metadata, report, torch_report)


def _bare(path: Path):
    """A part's graph without its metadata (merge_models refuses differing values; ours replace them)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    return model


def _drop_output(model, name: str) -> None:
    keep = [o for o in model.graph.output if o.name != name]
    del model.graph.output[:]
    model.graph.output.extend(keep)


def _set_io(
    model, input_name: str, inner_input: str, outputs: list[tuple[str, str]], channels_last: bool
) -> None:
    """Give the joined graph the layout's edge names: Transpose (NHWC layouts) or Identity nodes."""
    from onnx import TensorProto, helper

    graph = model.graph
    edge = [helper.make_node("Transpose", [input_name], [inner_input], perm=[0, 3, 1, 2], name="layout/in")
            if channels_last else helper.make_node("Identity", [input_name], [inner_input], name="layout/in")]  # fmt: skip
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(edge + nodes)
    for i, (name, source) in enumerate(outputs):
        if channels_last:
            graph.node.append(
                helper.make_node("Transpose", [source], [name], perm=[0, 2, 3, 1], name=f"layout/out{i}")
            )
        else:
            graph.node.append(helper.make_node("Identity", [source], [name], name=f"layout/out{i}"))
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(input_name, TensorProto.FLOAT, None))
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name, _ in outputs)


def _composed_metadata(
    enc: PartInfo, dec: PartInfo, face_dec: PartInfo | None, layout: str, opset: int, dtype: str
) -> dict[str, str]:
    spec = LAYOUTS[layout]

    def own(info: PartInfo | None) -> dict[str, str] | None:
        return None if info is None else {k: v for k, v in info.metadata.items() if k != "latent"}

    return {
        "torchsae_version": torchsae.__version__,
        "composed": "1",
        "latent": json.dumps(enc.spec.to_dict(), sort_keys=True),
        "latent_id": enc.spec.id,
        "resolution": str(enc.spec.resolution),
        "face_type": enc.spec.face_type,
        "layout": layout,
        **io_facts(spec.channels_last, dtype, opset),
        "input": spec.input_name,
        "outputs": ",".join(spec.output_names),
        "face_mask_from": "face_decoder" if face_dec is not None else "decoder",
        "parts": json.dumps(
            {"encoder": own(enc), "decoder": own(dec), "face_decoder": own(face_dec)}, sort_keys=True
        ),
        "swap": "face in -> encoder part -> code -> decoder part -> the decoder's identity out",
    }
