"""A TorchSAE checkpoint -> a DeepFaceLab SAEHD model folder (the inverse of ``dfl_import``).

What is written (``model_writer`` writes the files; the names and layouts are the ones the importer
reads: the model family's ``dfl_files``, ``DISCRIMINATORS``, ``SLOTS``, ``slot_key`` and
``models.tf_layout``, so both directions share one mapping):

* one weight pickle per network, ``{'<sub/path>/weight:0': float32 ndarray}`` in TensorFlow layouts,
  keys in the network's own order. DF: ``encoder``, ``inter``, ``decoder_src`` (= decoder B),
  ``decoder_dst`` (= decoder A); LIAE: ``encoder``, ``inter_AB``, ``inter_B``, ``decoder``.
  ``code_discriminator`` and ``GAN`` when the options use them and the checkpoint has them.
* ``src_dst_opt`` (and ``D_code_opt``, ``GAN_opt``): ``iters:0``, then each slot (AdaBelief ``ms_``
  then ``vs_``, or RMSprop ``acc_``) over every weight of every network in order; a weight the
  optimizer never updated (LIAE's frozen inter_AB) gets zero moments, as DeepFaceLab keeps a slot for
  every weight.
* ``data.dat`` (iteration, options, loss history) and ``summary.txt``.

torch is imported inside the functions, so listing and option mapping (``torchsae import-dfl`` asking
which model) run without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import torchsae
from torchsae.dfl.errors import DFLExportError
from torchsae.dfl.model_files import (
    DISCRIMINATORS,
    G_OPTIMIZER_FILE,
    SLOTS,
    slot_key,
)
from torchsae.dfl.model_writer import (
    check_expressible,
    config_to_options,
    describe_dropped,
    loss_history,
    model_data,
    summary_text,
    write_model_folder,
)

if TYPE_CHECKING:
    from torch import nn

    from torchsae.config import Config

DEFAULT_MODEL_NAME = "torchsae"


@dataclass
class DFLExportResult:
    """What ``export_dfl_model`` wrote and what the user should know about it."""

    folder: Path
    model_name: str
    step: int
    config: Config
    files: list[Path]
    networks: list[str]
    optimizers: list[str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def network_weights(module: nn.Module, weights: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    """One network's DeepFaceLab weight dict from its slice of a checkpoint's state_dict.

    ``module`` (built on the meta device) gives the keys, their order and shapes; ``weights`` maps the
    module's own keys to tensors. A missing, extra or misshapen key is an error naming ``source``.
    """
    from torchsae.models.tf_layout import torch_key_to_tf, torch_tensor_to_tf

    expected = module.state_dict()
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise DFLExportError(f"{source}: unexpected weight(s) {', '.join(extra[:3])} for this archi")
    out: dict[str, np.ndarray] = {}
    for key, want in expected.items():
        if key not in weights:
            raise DFLExportError(f"{source}: weight {key!r} is missing")
        tensor = weights[key]
        if tuple(tensor.shape) != tuple(want.shape):
            raise DFLExportError(
                f"{source}: weight {key!r} has shape {tuple(tensor.shape)}, expected {tuple(want.shape)}"
            )
        out[torch_key_to_tf(key)] = torch_tensor_to_tf(tensor).astype(np.float32, copy=False)
    return out


def _sub_state(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}


def optimizer_moments(
    opt_state: dict[str, Any] | None,
    owner: nn.Module,
    scoped: list[tuple[str, nn.Module]],
    kind: str,
    iteration: int,
    source: str,
) -> dict[str, Any]:
    """An optimizer file's dict from a torch optimizer state_dict of ``owner.parameters()``.

    The state_dict numbers parameters in ``owner.parameters()`` order (the trainer's and the
    importer's order). ``scoped`` pairs each TF scope with its module inside ``owner``. Slots the
    optimizer has no state for are zeros.
    """
    import torch

    from torchsae.models.tf_layout import tf_shape, torch_key_to_tf, torch_tensor_to_tf

    params = list(owner.parameters())
    by_param: dict[int, dict[str, Any]] = {}
    if opt_state is not None:
        order = [i for group in opt_state.get("param_groups", []) for i in group.get("params", [])]
        if len(order) != len(params):
            raise DFLExportError(
                f"{source}: optimizer holds {len(order)} parameters, the network has {len(params)}"
            )
        for position, index in enumerate(order):
            by_param[id(params[position])] = opt_state.get("state", {}).get(index, {})
    out: dict[str, Any] = {"iters:0": np.int64(iteration)}
    for prefix, state_name in SLOTS[kind]:
        for scope, module in scoped:
            for name, param in module.named_parameters():
                value = by_param.get(id(param), {}).get(state_name)
                key = slot_key(prefix, scope, torch_key_to_tf(name))
                if value is None:
                    out[key] = np.zeros(tf_shape(tuple(param.shape)), dtype=np.float32)
                    continue
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
                    raise DFLExportError(
                        f"{source}: optimizer slot {state_name!r} of {scope}/{name} is malformed"
                    )
                out[key] = torch_tensor_to_tf(value).astype(np.float32, copy=False)
    return out


def export_dfl_model(
    checkpoint: str | Path, folder: str | Path, model_name: str | None = None, *, force: bool = False
) -> DFLExportResult:
    """Write ``checkpoint`` as DeepFaceLab SAEHD model ``model_name`` in ``folder``.

    ``model_name`` defaults to the name the model was imported under, else ``torchsae``. Raises a
    TorchSAEError (one line) for a model DeepFaceLab cannot express, a checkpoint that does not fit
    its archi, or files already there without ``force``; nothing is written before all of it is built.
    """
    import torch

    from torchsae.config import Config
    from torchsae.errors import TorchSAEError
    from torchsae.models.registry import build_discriminator, build_model
    from torchsae.train.checkpoint import read_checkpoint

    checkpoint, folder = Path(checkpoint), Path(folder)
    state = read_checkpoint(checkpoint)
    source = str(checkpoint)
    try:
        config = Config.from_dict(state.config).validate()
    except TorchSAEError as exc:
        raise DFLExportError(f"{source}: checkpoint config is invalid: {exc}") from exc
    step = int(state.step or 0)
    check_expressible(config, step, source)
    imported = state.imported_from or {}
    name = model_name or imported.get("model_name") or DEFAULT_MODEL_NAME
    exported = config_to_options(config, imported.get("options"), imported.get("max_steps"))
    warnings = [describe_dropped(exported.dropped)] if exported.dropped else []
    notes: list[str] = []

    with torch.device("meta"):  # names, order and shapes only
        model = build_model(config.model)
    files: dict[str, Any] = {}
    g_modules = [(net, attr, getattr(model, attr)) for net, attr in config.model.family.dfl_files]
    for net, attr, module in g_modules:
        files[f"{net}.npy"] = network_weights(module, _sub_state(state.model, attr), f"{source} [{attr}]")
    networks = [net for net, _, _ in g_modules]
    kind = config.optim.optimizer
    optimizers = state.optimizers or {}
    scoped = [(net, module) for net, _, module in g_modules]
    if "model" not in optimizers:
        notes.append(
            f"{name}_SAEHD_{G_OPTIMIZER_FILE}.npy: the checkpoint has no optimizer state; moments are zero"
        )
    files[f"{G_OPTIMIZER_FILE}.npy"] = optimizer_moments(
        optimizers.get("model"), model, scoped, kind, step, f"{source} [optimizers.model]"
    )
    written_opts = [G_OPTIMIZER_FILE]
    discs = state.discriminators or {}
    wanted = {"code": config.loss.true_face_power > 0, "gan": config.loss.gan_power > 0}
    for disc in DISCRIMINATORS:
        if not wanted[disc.name]:
            continue
        if disc.name not in discs:
            notes.append(f"the checkpoint has no {disc.name} discriminator; DeepFaceLab starts it anew")
            continue
        with torch.device("meta"):
            module = build_discriminator(disc.name, config.model)
        files[f"{disc.weights_file}.npy"] = network_weights(
            module, discs[disc.name], f"{source} [discriminators.{disc.name}]"
        )
        networks.append(disc.weights_file)
        if disc.name in optimizers:
            files[f"{disc.optimizer_file}.npy"] = optimizer_moments(
                optimizers[disc.name],
                module,
                [(disc.scope, module)],
                kind,
                step,
                f"{source} [optimizers.{disc.name}]",
            )
            written_opts.append(disc.optimizer_file)
    history = loss_history((state.metrics or {}).get("history") or {}, step)
    running_on = [("Exported by", f"TorchSAE {torchsae.__version__}")]
    files["summary.txt"] = summary_text(name, step, exported.options, running_on)
    files["data.dat"] = model_data(step, exported.options, history)
    paths = write_model_folder(folder, name, files, force=force)
    return DFLExportResult(folder, name, step, config, paths, networks, written_opts, warnings, notes)
