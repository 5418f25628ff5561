"""Load the model an export starts from: a TorchSAE checkpoint -> (SAEHD, Config, step).

Why here and not in the trainer: export needs only the weights and the model config, on the CPU,
with ``weights_only`` loading; it must not build optimizers or data pipelines.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from torchsae.config import Config
from torchsae.errors import TorchSAEError
from torchsae.export.errors import ExportError


def load_model_for_export(
    checkpoint: str | Path, model_size: int | None = None
) -> tuple[nn.Module, Config, int]:
    """Build the model (``build_model``) from ``checkpoint`` and load its weights; check ``model_size`` if given.

    ``model_size`` is the resolution the user expects (``--model-size``); a checkpoint of another
    resolution is an ExportError naming both, since exporting a graph of the wrong size would only
    fail later inside DeepFaceLive or TensorRT.
    """
    from torchsae.models.registry import build_model
    from torchsae.train.checkpoint import read_checkpoint

    path = Path(checkpoint)
    state = read_checkpoint(path)  # the reader refuses files without a config or weights
    try:
        config = Config.from_dict(state.config)
        config.model.validate()
    except TorchSAEError as exc:
        raise ExportError(f"{path}: checkpoint config is invalid: {exc}") from exc
    resolution = config.model.resolution
    if model_size is not None and model_size != resolution:
        raise ExportError(
            f"{path}: --model-size {model_size} does not match the checkpoint, which was trained at "
            f"resolution {resolution} (omit --model-size or pass {resolution})"
        )
    model = build_model(config.model)
    try:
        model.load_state_dict(state.model)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ExportError(f"{path}: weights do not fit archi {config.model.archi!r}: {first}") from exc
    return model.eval(), config, int(state.step or 0)
