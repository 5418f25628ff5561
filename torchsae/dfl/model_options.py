"""A DeepFaceLab SAEHD model folder, torch-free part: find the model, read ``data.dat``, map options.

Why a separate, torch-free module: ``torchsae import-dfl`` must be able to list the models in a
folder, and tell a user which of their DeepFaceLab options carry over, before paying for torch;
and the option mapping is the part a user reads to understand what an import keeps.

Vocabulary: TorchSAE's A is DeepFaceLab's **dst** (the faces to replace) and B is **src** (the
identity rendered in), so ``random_dst_flip`` becomes ``data.random_flip_a`` and ``random_src_flip``
becomes ``data.random_flip_b``.

Every file is read through :func:`torchsae.dfl.unpickle.restricted_loads`: a DeepFaceLab model folder
is pickles from outside, and a plain ``pickle.load`` would run whatever a hostile file asks for.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsae.config import Config, TrainConfig
from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.unpickle import restricted_loads
from torchsae.errors import ConfigError

DATA_SUFFIX = "_SAEHD_data.dat"

# DeepFaceLab option -> (TorchSAE config section, key, kind). Kinds: "int", "float", "bool", "str".
OPTION_MAP: dict[str, tuple[str, str, str]] = {
    "resolution": ("model", "resolution", "int"),
    "face_type": ("model", "face_type", "str"),
    "archi": ("model", "archi", "str"),
    "ae_dims": ("model", "ae_dims", "int"),
    "e_dims": ("model", "e_dims", "int"),
    "d_dims": ("model", "d_dims", "int"),
    "d_mask_dims": ("model", "d_mask_dims", "int"),
    "gan_patch_size": ("model", "gan_patch_size", "int"),
    "gan_dims": ("model", "gan_dims", "int"),
    "masked_training": ("loss", "masked_training", "bool"),
    "eyes_mouth_prio": ("loss", "eyes_mouth_prio", "bool"),
    "blur_out_mask": ("loss", "blur_out_mask", "bool"),
    "true_face_power": ("loss", "true_face_power", "float"),
    "face_style_power": ("loss", "face_style_power", "float"),
    "bg_style_power": ("loss", "bg_style_power", "float"),
    "gan_power": ("loss", "gan_power", "float"),
    "uniform_yaw": ("data", "uniform_yaw", "bool"),
    "random_warp": ("data", "random_warp", "bool"),
    "random_hsv_power": ("data", "random_hsv_power", "float"),
    "ct_mode": ("data", "ct_mode", "str"),
    "random_src_flip": ("data", "random_flip_b", "bool"),  # src = B
    "random_dst_flip": ("data", "random_flip_a", "bool"),  # dst = A
    "clipgrad": ("optim", "clipgrad", "bool"),
    "pretrain": ("train", "pretrain", "bool"),
    "batch_size": ("train", "batch_size", "int"),
}
# Options with a rule of their own (see options_to_config).
SPECIAL_OPTIONS = ("adabelief", "lr_dropout", "target_iter")
# DeepFaceLab's upper limits (it clamps what the user types). A data.dat above them was not written by
# DeepFaceLab, and building its network could exhaust memory before any weight file is read.
MAXIMA = {
    "resolution": 640,
    "ae_dims": 1024,
    "e_dims": 256,
    "d_dims": 256,
    "d_mask_dims": 256,
    "gan_dims": 512,
}
# The options a DeepFaceLab SAEHD model cannot be rebuilt without.
REQUIRED_OPTIONS = ("resolution", "face_type", "archi", "ae_dims", "e_dims", "d_dims", "d_mask_dims")


@dataclass
class DFLModelData:
    """What ``<name>_SAEHD_data.dat`` holds that an import uses."""

    path: Path
    name: str
    iteration: int
    options: dict[str, Any]
    loss_history: list = field(default_factory=list)


@dataclass
class ImportedConfig:
    """The TorchSAE Config built from a model's options, and what did not carry over."""

    config: Config
    unsupported: dict[str, Any]
    notes: list[str]


def read_dfl_pickle(path: Path) -> object:
    """Read and unpickle one DeepFaceLab file through the restricted unpickler.

    A missing or unreadable file, a truncated/corrupt pickle and a pickle that names a global outside
    the numpy allow-list all become a one-line DFLFormatError naming ``path``.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DFLFormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise DFLFormatError(f"{path}: cannot read ({exc.strerror})") from None
    if not data:
        raise DFLFormatError(f"{path}: file is empty")
    return restricted_loads(data, str(path))


def find_models(folder: Path) -> list[str]:
    """Names of the SAEHD models in ``folder`` (``<name>_SAEHD_data.dat``), sorted."""
    if not folder.is_dir():
        raise DFLFormatError(f"{folder}: not a folder (expected a DeepFaceLab model folder)")
    return sorted(p.name[: -len(DATA_SUFFIX)] for p in folder.glob(f"*{DATA_SUFFIX}") if p.is_file())


def choose_model(folder: Path, model_name: str | None) -> str:
    """The model to import: ``model_name`` if given (it must exist), else the folder's only model.

    Several models and none named is an error listing them (the CLI asks instead when it can).
    """
    names = find_models(folder)
    if model_name is not None:
        if model_name not in names:
            found = ", ".join(names) if names else "none"
            raise DFLFormatError(
                f"{folder / (model_name + DATA_SUFFIX)}: no such SAEHD model (models found: {found})"
            )
        return model_name
    if not names:
        raise DFLFormatError(f"{folder}: no DeepFaceLab SAEHD model (*{DATA_SUFFIX}) in this folder")
    if len(names) > 1:
        raise DFLFormatError(
            f"{folder}: holds several SAEHD models ({', '.join(names)}); choose one with --model-name"
        )
    return names[0]


def read_model_data(folder: Path, name: str) -> DFLModelData:
    """Read ``<name>_SAEHD_data.dat``: iteration, options and the loss history, validated."""
    path = folder / f"{name}{DATA_SUFFIX}"
    data = read_dfl_pickle(path)
    if not isinstance(data, dict):
        raise DFLFormatError(f"{path}: expected a dict of model data, got {type(data).__name__}")
    for key in ("iter", "options"):
        if key not in data:
            raise DFLFormatError(f"{path}: key {key!r} is missing")
    iteration = data["iter"]
    if isinstance(iteration, bool) or not isinstance(iteration, numbers.Integral) or int(iteration) < 0:
        raise DFLFormatError(f"{path}: key 'iter' must be a non-negative integer, got {iteration!r}")
    options = data["options"]
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise DFLFormatError(f"{path}: key 'options' must be a dict of option names")
    missing = [key for key in REQUIRED_OPTIONS if key not in options]
    if missing:
        raise DFLFormatError(f"{path}: option(s) {', '.join(repr(k) for k in missing)} missing")
    history = data.get("loss_history")
    return DFLModelData(
        path, name, int(iteration), dict(options), history if isinstance(history, list) else []
    )


def _convert(path: Path, key: str, value: Any, kind: str) -> Any:
    """One option value as the Python type TorchSAE's config holds; errors name the file and key."""
    ok = {
        "bool": lambda v: (
            isinstance(v, bool) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "b")
        ),
        "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
    }[kind]
    if not ok(value):
        raise DFLFormatError(f"{path}: option {key!r} must be a {kind}, got {value!r}")
    return {"bool": bool, "int": int, "float": float, "str": str}[kind](value)


def options_to_config(model: DFLModelData) -> ImportedConfig:
    """Build the TorchSAE Config that reproduces a DeepFaceLab model's options.

    Carried over: every option in ``OPTION_MAP``, plus ``adabelief`` (optimizer adabelief/rmsprop),
    ``lr_dropout`` ('y' and 'cpu' -> on, 'n' -> off; 'cpu' only placed DFL's mask generation) and
    ``target_iter`` (-> ``train.max_steps`` when set). Everything else is returned in ``unsupported``
    for the caller to name in a warning. ``train.max_steps`` is always past the imported iteration,
    so a resumed run trains rather than stopping at once.
    """
    path, options = model.path, model.options
    overrides: dict[str, dict[str, Any]] = {}
    unsupported: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in options.items():
        if key in OPTION_MAP:
            section, name, kind = OPTION_MAP[key]
            value = _convert(path, key, value, kind)
            if key in MAXIMA and value > MAXIMA[key]:
                raise DFLFormatError(
                    f"{path}: option {key!r} = {value} is above DeepFaceLab's maximum {MAXIMA[key]}"
                )
            overrides.setdefault(section, {})[name] = value
        elif key not in SPECIAL_OPTIONS:
            unsupported[key] = value
    if "adabelief" in options:
        adabelief = _convert(path, "adabelief", options["adabelief"], "bool")
        overrides.setdefault("optim", {})["optimizer"] = "adabelief" if adabelief else "rmsprop"
    else:  # DeepFaceLab before AdaBelief (2021) trained with RMSprop
        overrides.setdefault("optim", {})["optimizer"] = "rmsprop"
        notes.append("no 'adabelief' option (a pre-2021 model): optimizer rmsprop")
    if "lr_dropout" in options:
        overrides["optim"]["lr_dropout"] = _lr_dropout(path, options["lr_dropout"])
    target = _convert(path, "target_iter", options.get("target_iter", 0), "int")
    default_steps = TrainConfig().max_steps
    if target > model.iteration:
        max_steps = target
    else:
        max_steps = model.iteration + default_steps
        if target:
            notes.append(f"target_iter {target} is already reached; max_steps set to {max_steps}")
    overrides.setdefault("train", {})["max_steps"] = max_steps
    try:
        config = Config().updated(overrides).validate()
    except ConfigError as exc:
        raise DFLFormatError(f"{path}: options do not fit TorchSAE: {exc}") from None
    return ImportedConfig(config, unsupported, notes)


def _lr_dropout(path: Path, value: Any) -> bool:
    """DeepFaceLab's lr_dropout: 'y' / 'cpu' / 'n' (a bool in models from before 2020-07)."""
    if isinstance(value, str) and value in ("y", "cpu", "n"):
        return value != "n"
    if isinstance(value, bool):
        return value
    raise DFLFormatError(f"{path}: option 'lr_dropout' must be 'y', 'cpu' or 'n', got {value!r}")


def describe_unsupported(unsupported: dict[str, Any]) -> str:
    """One warning line naming the options TorchSAE does not have, with their values."""
    shown = ", ".join(f"{key}={_plain(value)!r}" for key, value in unsupported.items())
    return f"DeepFaceLab options TorchSAE does not have (not carried over): {shown}"


def _plain(value: Any) -> Any:
    """numpy scalars print as ``np.int64(0)``; show the plain value."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value
