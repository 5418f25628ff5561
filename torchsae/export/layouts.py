"""The two exported graph layouts and DeepFaceLive's loading rules.

Why wrappers: the exporter traces one ``forward``; the layout decides the input name, NCHW versus
NHWC and the output order, while the network itself always runs ``SAEHD.swap`` in its own NCHW BGR
order. Keeping the permutes here means one model implementation serves both contracts.

* ``torchsae``: ``face`` (N,3,R,R) -> ``swapped`` (N,3,R,R), ``swapped_mask``, ``face_mask`` (N,1,R,R).
* ``dfm``: DeepFaceLive's contract (spec §6): ``in_face:0`` (N,R,R,3) -> ``out_face_mask:0``
  (N,R,R,1), ``out_celeb_face:0`` (N,R,R,3), ``out_celeb_face_mask:0`` (N,R,R,1), in that order, all
  NHWC. The ``:0`` suffixes are DeepFaceLab's tf2onnx names, and part of the contract: DeepFaceLive
  feeds the input by the literal name ``in_face:0``, so a graph input named ``in_face`` loads and
  then fails on the first frame.

All images are float32 BGR in [0, 1]. A is DeepFaceLab's dst (the face fed in), B is src.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from torchsae.export.errors import DfmContractError


@dataclass(frozen=True)
class LayoutSpec:
    """Names and tensor layout of one exported contract."""

    name: str
    input_name: str
    output_names: tuple[str, ...]
    channels_last: bool

    def input_shape(self, batch: int, resolution: int) -> tuple[int, int, int, int]:
        """The input tensor shape for ``batch`` faces of side ``resolution``."""
        if self.channels_last:
            return (batch, resolution, resolution, 3)
        return (batch, 3, resolution, resolution)

    def output_shapes(self, batch: int, resolution: int) -> tuple[tuple[int, ...], ...]:
        """The expected output shapes, in graph order."""
        channels = {"swapped": 3, "out_celeb_face:0": 3}
        shapes = []
        for name in self.output_names:
            c = channels.get(name, 1)
            shapes.append(
                (batch, resolution, resolution, c)
                if self.channels_last
                else (batch, c, resolution, resolution)
            )
        return tuple(shapes)

    def to_input(self, faces_nhwc: np.ndarray) -> np.ndarray:
        """Convert (N,R,R,3) BGR faces to this layout's input array (float32, contiguous)."""
        faces = np.asarray(faces_nhwc, dtype=np.float32)
        if not self.channels_last:
            faces = faces.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(faces)


LAYOUTS: dict[str, LayoutSpec] = {
    "torchsae": LayoutSpec("torchsae", "face", ("swapped", "swapped_mask", "face_mask"), channels_last=False),
    "dfm": LayoutSpec(
        "dfm",
        "in_face:0",
        ("out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0"),
        channels_last=True,
    ),
}
# What DeepFaceLive's DFMModel does at run time (spec §6): it feeds these literal names.
DFM_INPUT = "in_face:0"
DFM_MORPH_INPUT = "morph_value:0"
DFM_MAX_OPSET = 16  # DeepFaceLive's release builds pin ONNX Runtime 1.11


class SwapGraph(nn.Module):
    """``SAEHD.swap`` arranged per layout; ``compute_dtype`` float16 makes the fp16 graph.

    For fp16 the weights are converted by the caller (``model.half()``); this wrapper casts the
    float32 input to half on entry and the outputs back to float32, so the graph's interface stays
    float32 (what DeepFaceLive feeds and what TensorRT's strongly typed mode expects at the edges)
    while every conv, dense and activation runs in half precision inside the graph.
    """

    def __init__(self, model: nn.Module, layout: str, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.spec = LAYOUTS[layout]
        self.compute_dtype = compute_dtype

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = face.permute(0, 3, 1, 2) if self.spec.channels_last else face
        swapped, swapped_mask, face_mask = self.model.swap(x.to(self.compute_dtype))
        swapped, swapped_mask, face_mask = (t.float() for t in (swapped, swapped_mask, face_mask))
        if not self.spec.channels_last:
            return swapped, swapped_mask, face_mask
        nhwc = (t.permute(0, 2, 3, 1) for t in (face_mask, swapped, swapped_mask))
        return tuple(nhwc)  # type: ignore[return-value]


@dataclass(frozen=True)
class DfmInfo:
    """What DeepFaceLive learns from a ``.dfm`` when it loads it."""

    height: int
    width: int
    has_morph_value: bool
    input_name: str
    output_names: tuple[str, str, str]


def check_dfm_contract(model: str | bytes, *, run: bool = True, batch: int = 2) -> DfmInfo:
    """Apply DeepFaceLive's ``DFMModel`` rules (spec §6) to an ONNX file or its bytes.

    At load, DeepFaceLive requires ``inputs[0].name`` to contain ``in_face``, reads H and W from
    ``inputs[0].shape[1:3]`` and allows a second input only if its name contains ``morph_value``.
    At run time it feeds the inputs by the literal names ``in_face:0`` and ``morph_value:0`` (so the
    names must be exactly those) and unpacks the three outputs by position as (face_mask,
    celeb_face, celeb_mask). Its ONNX Runtime (1.11) reads opsets up to 16. With ``run`` the model is
    executed the way DeepFaceLive does it, on ``batch`` random faces, and each output's shape is
    checked. Raises DfmContractError naming the rule.
    """
    import onnx

    from torchsae.export.session import make_session

    source = model if isinstance(model, str) else "<onnx bytes>"
    header = (
        onnx.load(model, load_external_data=False) if isinstance(model, str) else onnx.load_from_string(model)
    )
    opset = next((o.version for o in header.opset_import if o.domain in ("", "ai.onnx")), None)
    del header
    session = make_session(model)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not inputs or "in_face" not in inputs[0].name:
        raise DfmContractError(
            f"{source}: inputs[0] must be named '*in_face*', got {[i.name for i in inputs]}"
        )
    if inputs[0].name != DFM_INPUT:
        raise DfmContractError(
            f"{source}: input is named {inputs[0].name!r}; DeepFaceLive feeds it by the literal name "
            f"{DFM_INPUT!r}, so this model would load and then fail on the first frame"
        )
    shape = inputs[0].shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:3]) or shape[3] != 3:
        raise DfmContractError(
            f"{source}: input {DFM_INPUT!r} must be (N, H, W, 3) with static H, W; got {shape}"
        )
    height, width = int(shape[1]), int(shape[2])
    extra = inputs[1:]
    if len(extra) > 1 or (extra and "morph_value" not in extra[0].name):
        raise DfmContractError(
            f"{source}: only a second input named '*morph_value*' is allowed, got {[i.name for i in extra]}"
        )
    if extra and extra[0].name != DFM_MORPH_INPUT:
        raise DfmContractError(
            f"{source}: second input is named {extra[0].name!r}; DeepFaceLive feeds it by the literal "
            f"name {DFM_MORPH_INPUT!r}"
        )
    if len(outputs) != 3:
        raise DfmContractError(
            f"{source}: DeepFaceLive unpacks exactly 3 outputs, the graph has {len(outputs)}"
        )
    if opset is None or opset > DFM_MAX_OPSET:
        raise DfmContractError(
            f"{source}: opset {opset}; DeepFaceLive's ONNX Runtime 1.11 reads opsets up to {DFM_MAX_OPSET}"
        )
    names = tuple(o.name for o in outputs)
    if run:
        feeds = {DFM_INPUT: np.random.default_rng(0).random((batch, height, width, 3), dtype=np.float32)}
        if extra:
            feeds[DFM_MORPH_INPUT] = np.array([0.75], dtype=np.float32)
        face_mask, celeb_face, celeb_mask = session.run(None, feeds)
        expected = (("face_mask", 1), ("celeb_face", 3), ("celeb_mask", 1))
        for position, (array, (label, channels)) in enumerate(
            zip((face_mask, celeb_face, celeb_mask), expected, strict=True)
        ):
            if array.shape != (batch, height, width, channels):
                raise DfmContractError(
                    f"{source}: output {position} ({label}, {names[position]!r}) has shape {array.shape}, "
                    f"expected {(batch, height, width, channels)}"
                )
    return DfmInfo(height, width, bool(extra), inputs[0].name, names)  # type: ignore[arg-type]
