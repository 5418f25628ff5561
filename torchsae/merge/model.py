"""The swap model behind ``torchsae swap`` and ``torchsae merge``: a checkpoint, an ``.onnx`` or a ``.dfm``.

Why one small interface over three kinds of file: the merger only needs "A faces in, swapped faces and
masks out" at a fixed resolution. A TorchSAE checkpoint runs ``SAEHD.swap`` in PyTorch (on the GPU
when there is one); an exported graph runs through ONNX Runtime, whose input and output names are
read from the session, so both our ``torchsae`` layout (``face`` -> ``swapped``, ``swapped_mask``,
``face_mask``, NCHW) and the DeepFaceLive ``.dfm`` layout (``in_face`` or ``in_face:0`` ->
``out_face_mask``, ``out_celeb_face``, ``out_celeb_face_mask``, NHWC) load the same way.

Every swapper takes and returns NHWC float32 BGR in [0, 1]: faces (N, R, R, 3) in; the swapped face
(DeepFaceLab's ``pred_src_dst``), the learned swap mask (``pred_src_dstm``) and the learned A mask
(``pred_dst_dstm``) out, masks (N, R, R, 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchsae.dfl.geometry import SHORT_FACE_TYPES
from torchsae.errors import TorchSAEError

ONNX_SUFFIXES = (".onnx", ".dfm")
DFM_DEFAULT_FACE_TYPE = "wf"  # DeepFaceLab's SAEHD default; a .dfm does not record its face type
MORPH_VALUE = 0.75  # DeepFaceLive's default for AMP models' second input


@dataclass
class SwapOutput:
    """One batch of swaps, NHWC float32 in [0, 1]."""

    face: np.ndarray  # (N, R, R, 3) the swapped face (pred_src_dst)
    swap_mask: np.ndarray  # (N, R, R, 1) learned mask of the swap (pred_src_dstm)
    face_mask: np.ndarray  # (N, R, R, 1) learned mask of the input A face (pred_dst_dstm)


class Swapper:
    """A loaded swap model: ``resolution``, ``face_type`` (TorchSAE short name), ``__call__``."""

    resolution: int
    face_type: str
    description: str
    device: str = "cpu"

    def __call__(self, faces: np.ndarray) -> SwapOutput:  # pragma: no cover - interface
        raise NotImplementedError


class TorchSwapper(Swapper):
    """``SAEHD.swap`` of a TorchSAE checkpoint, in float32, on ``device``."""

    def __init__(self, path: Path, device: str | None = None) -> None:
        import torch

        from torchsae.export.source import load_model_for_export

        if path.is_dir():  # a run folder: its last checkpoint
            from torchsae.train.checkpoint import find_last_checkpoint

            found = find_last_checkpoint(path)
            if found is None:
                raise TorchSAEError(f"{path}: a folder without models/last.pth; pass a checkpoint file")
            path = found
        model, config, step = load_model_for_export(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.resolution = int(config.model.resolution)
        self.face_type = config.model.face_type
        self.description = f"{path} ({config.model.archi}, {self.resolution} px, step {step}, {self.device})"

    def __call__(self, faces: np.ndarray) -> SwapOutput:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            swapped, swap_mask, face_mask = self.model.swap(x.to(self.device))
        face, sm, fm = (
            t.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() for t in (swapped, swap_mask, face_mask)
        )
        return SwapOutput(face, sm, fm)


def _output_roles(names: list[str], channels_last: bool) -> list[str]:
    """Which of face / swap_mask / face_mask each graph output is, from its name (position otherwise)."""
    roles = []
    for name in names:
        base = name.split(":")[0]
        if "celeb_face_mask" in base or base == "swapped_mask":
            roles.append("swap_mask")
        elif "celeb_face" in base or base == "swapped":
            roles.append("face")
        elif "face_mask" in base:
            roles.append("face_mask")
        else:
            roles.append("")
    if sorted(roles) == ["face", "face_mask", "swap_mask"]:
        return roles
    # unknown names: DeepFaceLive's positional rule for NHWC graphs, ours for NCHW
    return ["face_mask", "face", "swap_mask"] if channels_last else ["face", "swap_mask", "face_mask"]


class OnnxSwapper(Swapper):
    """An exported graph through ONNX Runtime (CUDA provider when installed and usable)."""

    def __init__(self, path: Path, face_type: str | None = None, device: str | None = None) -> None:
        from torchsae.export.session import make_session

        try:
            import onnxruntime as ort

            available = ort.get_available_providers()
        except ImportError:
            available = []
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = make_session(path, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if not inputs or len(outputs) != 3:
            raise TorchSAEError(
                f"{path}: not a swap model (need one face input and 3 outputs, got "
                f"{len(inputs)} inputs and {len(outputs)} outputs)"
            )
        face_input = inputs[0]
        shape = list(face_input.shape)
        if len(shape) != 4:
            raise TorchSAEError(f"{path}: input {face_input.name!r} has shape {shape}, expected 4 axes")
        self.channels_last = shape[3] == 3
        spatial = shape[1:3] if self.channels_last else shape[2:4]
        if not self.channels_last and shape[1] != 3:
            raise TorchSAEError(f"{path}: input {face_input.name!r} of shape {shape} is not 3-channel BGR")
        if not all(isinstance(d, int) for d in spatial) or spatial[0] != spatial[1]:
            raise TorchSAEError(
                f"{path}: input {face_input.name!r} must be square with a fixed size, got {shape}"
            )
        self.resolution = int(spatial[0])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_name = face_input.name
        self.extra_feeds = {}
        for extra in inputs[1:]:
            if "morph_value" not in extra.name:
                raise TorchSAEError(
                    f"{path}: unexpected second input {extra.name!r} (only morph_value is allowed)"
                )
            self.extra_feeds[extra.name] = np.array([MORPH_VALUE], dtype=np.float32)
        self.output_names = [o.name for o in outputs]
        self.roles = _output_roles(self.output_names, self.channels_last)
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        stored = meta.get("face_type")
        chosen = face_type or stored or DFM_DEFAULT_FACE_TYPE
        self.face_type = {long: short for short, long in SHORT_FACE_TYPES.items()}.get(chosen, chosen)
        if self.face_type not in SHORT_FACE_TYPES:
            raise TorchSAEError(f"{path}: face type {chosen!r} is not one of {', '.join(SHORT_FACE_TYPES)}")
        layout = "NHWC" if self.channels_last else "NCHW"
        self.description = (
            f"{path} (ONNX {layout}, {self.resolution} px, face type {self.face_type}, {self.device})"
        )
        self.path = path

    def _run(self, faces: np.ndarray) -> list[np.ndarray]:
        x = faces if self.channels_last else faces.transpose(0, 3, 1, 2)
        feeds = {self.input_name: np.ascontiguousarray(x, dtype=np.float32), **self.extra_feeds}
        return self.session.run(self.output_names, feeds)

    def __call__(self, faces: np.ndarray) -> SwapOutput:
        chunks = (
            [faces]
            if self.fixed_batch is None
            else [faces[i : i + self.fixed_batch] for i in range(0, len(faces), self.fixed_batch)]
        )
        parts: dict[str, list[np.ndarray]] = {"face": [], "swap_mask": [], "face_mask": []}
        for chunk in chunks:
            n = len(chunk)
            if self.fixed_batch is not None and n < self.fixed_batch:  # pad a short last chunk
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.fixed_batch - n, 0)])
            for role, out in zip(self.roles, self._run(chunk), strict=True):
                out = np.asarray(out, dtype=np.float32)[:n]
                if not self.channels_last:
                    out = out.transpose(0, 2, 3, 1)
                parts[role].append(out)
        face, sm, fm = (np.clip(np.concatenate(parts[k]), 0, 1) for k in ("face", "swap_mask", "face_mask"))
        expected = (len(faces), self.resolution, self.resolution)
        for name, arr, c in (("face", face, 3), ("swap mask", sm, 1), ("face mask", fm, 1)):
            if arr.shape != (*expected, c):
                raise TorchSAEError(
                    f"{self.path}: the {name} output has shape {arr.shape}, expected {(*expected, c)} "
                    "(a graph whose outputs do not match its input resolution)"
                )
        return SwapOutput(face, sm, fm)


def load_swapper(
    model: str | Path,
    *,
    device: str | None = None,
    face_type: str | None = None,
    model_size: int | None = None,
) -> Swapper:
    """Load a checkpoint (or run folder), ``.onnx`` or ``.dfm``; check ``model_size`` when given."""
    path = Path(model)
    if not path.exists():
        raise TorchSAEError(f"{path}: model not found")
    if path.suffix.lower() in ONNX_SUFFIXES:
        swapper: Swapper = OnnxSwapper(path, face_type=face_type, device=device)
    else:
        swapper = TorchSwapper(path, device=device)
        if face_type is not None and face_type != swapper.face_type:
            raise TorchSAEError(
                f"{path}: --face-type {face_type} does not match the checkpoint's {swapper.face_type}"
            )
    if model_size is not None and model_size != swapper.resolution:
        raise TorchSAEError(
            f"{path}: the model's resolution is {swapper.resolution}, not --model-size {model_size}"
        )
    return swapper
