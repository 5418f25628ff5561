"""A DeepFaceLab SAEHD model folder -> a TorchSAE checkpoint that ``torchsae train --resume`` continues.

What is read (spec §2, §4; every file through the restricted unpickler):

* ``<name>_SAEHD_data.dat``: iteration and options -> the Config (``model_options``).
* one weight pickle per network, ``{'<sub/path>/weight:0': ndarray}`` in TensorFlow layouts. DF:
  ``encoder``, ``inter``, ``decoder_src`` (-> ``decoder_b``), ``decoder_dst`` (-> ``decoder_a``);
  LIAE: ``encoder``, ``inter_AB``, ``inter_B``, ``decoder``. ``code_discriminator`` and ``GAN`` when
  the options use them. ``models.tf_layout`` renames keys and transposes kernels.
* the optimizers ``src_dst_opt``, ``D_code_opt``, ``GAN_opt``: ``iters:0`` plus, per weight
  ``<net>/<sub/path>/weight:0``, AdaBelief's ``ms_<net>/<sub/path>/weight_0:0`` and ``vs_...`` or
  RMSprop's ``acc_...`` (the TF slot names), in the weight's own layout.

Nothing is written until every file has been read and checked; the checkpoint then goes through
``save_checkpoint`` (temp name + rename), so an error leaves no file at the output path.

torch is imported inside the functions, so listing and option mapping (``torchsae import-dfl`` asking
which model) run without it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.model_files import (  # noqa: F401  (re-exported: the converters' shared tables)
    DISCRIMINATORS,
    G_OPTIMIZER_FILE,
    SLOTS,
    Discriminator,
    net_path,
    plain_options,
    read_weight_dict,
    slot_key,
)
from torchsae.dfl.model_options import (
    DFLModelData,
    choose_model,
    describe_unsupported,
    options_to_config,
    read_model_data,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchsae.config import Config


@dataclass
class ImportResult:
    """What ``import_dfl_model`` wrote and what the user should know about it."""

    output: Path
    model_name: str
    step: int
    config: Config
    networks: list[str]
    optimizers: list[str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_network(module: nn.Module, path: Path) -> None:
    """Load one network's DeepFaceLab weights into ``module`` (every key, exact shapes)."""
    from torchsae.models.tf_layout import tf_to_state_dict

    module.load_state_dict(tf_to_state_dict(read_weight_dict(path), module, str(path)))


def load_moments(
    path: Path, modules: list[tuple[str, nn.Module]], optimizer: str
) -> tuple[dict[torch.Tensor, dict[str, torch.Tensor]], int]:
    """Read an optimizer pickle into ``{parameter: {state name: tensor}}`` plus its ``iters``.

    ``modules`` pairs each TF scope with the module whose parameters it holds. Every slot of every
    parameter must be present with the parameter's TF shape; a slot of the other optimizer kind, an
    unknown key or a missing one is an error naming the file and the key.
    """
    from torchsae.models.tf_layout import tf_array_to_torch, tf_shape, torch_key_to_tf

    data = read_weight_dict(path)
    if "iters:0" not in data:
        raise DFLFormatError(f"{path}: key 'iters:0' is missing")
    iters = data["iters:0"]
    if isinstance(iters, bool) or not (
        isinstance(iters, (numbers.Integral, np.ndarray))
        and np.asarray(iters).shape == ()
        and np.asarray(iters).dtype.kind in "iu"
    ):
        raise DFLFormatError(f"{path}: key 'iters:0' must be an integer scalar, got {iters!r}")
    expected: dict[str, tuple[torch.Tensor, str]] = {}
    for scope, module in modules:
        for name, param in module.named_parameters():
            for prefix, state_name in SLOTS[optimizer]:
                expected[slot_key(prefix, scope, torch_key_to_tf(name))] = (param, state_name)
    other = next(k for k in SLOTS if k != optimizer)
    state: dict[Any, dict[str, Any]] = {}
    for key, array in data.items():
        if key == "iters:0":
            continue
        if key not in expected:
            if key.startswith(tuple(p for p, _ in SLOTS[other])):
                raise DFLFormatError(
                    f"{path}: slot {key!r} belongs to {other}, but the options say {optimizer} "
                    "(option 'adabelief' and the optimizer file disagree)"
                )
            raise DFLFormatError(f"{path}: unexpected key {key!r} (no such weight in the network)")
        param, state_name = expected[key]
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise DFLFormatError(f"{path}: key {key!r} is not a float array")
        want = tf_shape(tuple(param.shape))
        if tuple(array.shape) != want:
            raise DFLFormatError(f"{path}: key {key!r} has shape {array.shape}, the network needs {want}")
        state.setdefault(param, {})[state_name] = tf_array_to_torch(array).to(param.dtype)
    missing = [k for k, (param, name) in expected.items() if name not in state.get(param, {})]
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise DFLFormatError(f"{path}: key(s) {', '.join(repr(k) for k in missing[:3])}{more} missing")
    return state, int(iters)


def _optimizer_state(params: list, moments: dict, config: Config) -> dict[str, Any]:
    """The optimizer state_dict the trainer loads: TorchSAE's own optimizer with DFL's moments in it."""
    from torchsae.optim import build_optimizer

    opt = build_optimizer(params, config.optim, pretrain=config.train.pretrain, seed=config.train.seed)
    for param, slots in moments.items():
        opt.state[param] = dict(slots)
    return opt.state_dict()


def _load_discriminators(
    folder: Path, name: str, model: nn.Module, config: Config, notes: list[str]
) -> dict[str, nn.Module]:
    """The discriminators the options use, loaded from their files (DeepFaceLab's rule: a power of 0
    means the file is not loaded; a missing file means the trainer starts that discriminator anew)."""
    from torchsae.models.registry import build_discriminator

    wanted = {"code": config.loss.true_face_power > 0, "gan": config.loss.gan_power > 0}
    loaded: dict[str, nn.Module] = {}
    for disc in DISCRIMINATORS:
        path = net_path(folder, name, disc.weights_file)
        if not wanted[disc.name]:
            if path.is_file():
                notes.append(f"{path.name}: not used by the options (power 0), not imported")
            continue
        if not path.is_file():
            notes.append(f"{path.name}: not found, the {disc.name} discriminator starts from scratch")
            continue
        module: nn.Module = build_discriminator(disc.name, config.model)
        load_network(module, path)
        loaded[disc.name] = module
    return loaded


def import_dfl_model(folder: str | Path, output: str | Path, model_name: str | None = None) -> ImportResult:
    """Import DeepFaceLab model ``model_name`` (default: the folder's only one) to checkpoint ``output``.

    Raises a TorchSAEError naming the file (and key) for anything missing, truncated, mismatched or
    hostile; ``output`` is written only after everything has been read and converted.
    """
    from torchsae.models.registry import build_model
    from torchsae.train.checkpoint import TrainingCheckpoint, write_checkpoint

    folder, output = Path(folder), Path(output)
    name = choose_model(folder, model_name)
    data = read_model_data(folder, name)
    imported = options_to_config(data)
    config = imported.config
    warnings = [describe_unsupported(imported.unsupported)] if imported.unsupported else []
    notes = list(imported.notes)

    model = build_model(config.model)  # every weight is overwritten below
    # DeepFaceLab network file -> submodule, as the model family declares it (src is B, dst is A)
    g_modules = [(net, getattr(model, attr)) for net, attr in config.model.family.dfl_files]
    for net, module in g_modules:
        load_network(module, net_path(folder, name, net))
    networks = [net for net, _ in g_modules]
    disc_modules = _load_discriminators(folder, name, model, config, notes)
    networks += [disc.weights_file for disc in DISCRIMINATORS if disc.name in disc_modules]
    iteration = data.iteration
    sources = [("model", G_OPTIMIZER_FILE, g_modules, model)]
    sources += [
        (disc.name, disc.optimizer_file, [(disc.scope, disc_modules[disc.name])], disc_modules[disc.name])
        for disc in DISCRIMINATORS
        if disc.name in disc_modules
    ]
    optimizers: dict[str, Any] = {}
    for key, file, scoped, owner in sources:
        path = net_path(folder, name, file)
        if not path.is_file():
            notes.append(f"{path.name}: not found, {key} optimizer moments start from zero")
            continue
        moments, iters = load_moments(path, scoped, config.optim.optimizer)
        if iters != iteration:
            notes.append(
                f"{path.name}: optimizer counted {iters} steps, the model {iteration}; using {iteration}"
            )
        optimizers[key] = _optimizer_state(list(owner.parameters()), moments, config)

    state = TrainingCheckpoint(
        step=iteration,
        config=config.to_dict(),
        model=model.state_dict(),
        optimizers=optimizers,
        discriminators={key: module.state_dict() for key, module in disc_modules.items()},
        metrics={"skipped_steps": 0, "history": _history(data, config.train.log_interval)},
        imported_from={
            "format": "deepfacelab-saehd",
            "folder": str(folder),
            "model_name": name,
            # what export-dfl writes back for options TorchSAE does not have (target_iter while
            # max_steps is still the one derived here, models_opt_on_gpu, lr_dropout 'cpu', ...)
            "options": plain_options(data.options),
            "max_steps": config.train.max_steps,
        },
    )
    write_checkpoint(output, state)
    return ImportResult(output, name, iteration, config, networks, list(optimizers), warnings, notes)


def _history(data: DFLModelData, every: int) -> dict[str, list[list[float]]]:
    """DeepFaceLab's per-iteration ``[src_loss, dst_loss]`` history as TorchSAE's logged history.

    Entry i of the last len(history) iterations is step ``iter - len + i + 1``; one point per
    ``every`` steps is kept, as the trainer logs. A malformed history is dropped, not an error: it
    only draws the loss curve.
    """
    out: dict[str, list[list[float]]] = {"loss_a": [], "loss_b": []}
    first = data.iteration - len(data.loss_history) + 1
    for i, entry in enumerate(data.loss_history):
        step = first + i
        if step % every:
            continue
        try:
            src, dst = (float(v) for v in entry[:2])
        except (TypeError, ValueError, IndexError, KeyError):
            return {"loss_a": [], "loss_b": []}
        out["loss_b"].append([step, src])  # src = B
        out["loss_a"].append([step, dst])  # dst = A
    return out
