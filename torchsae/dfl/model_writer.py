"""Writing a DeepFaceLab SAEHD model folder, torch-free part: options, data.dat, summary, files.

The mirror of ``model_options`` (which reads): ``config_to_options`` is the inverse of
``options_to_config`` through the same ``OPTION_MAP``, and ``write_model_folder`` writes pickles that
numpy-1.x DeepFaceLab reads (``compat_dumps``), each file atomically.

What DeepFaceLab expects (spec §4; ``tests/fixtures/dfl_models/README.md``):

* ``<name>_SAEHD_data.dat``: ``{'iter', 'options', 'loss_history', 'sample_for_preview',
  'choosed_gpu_indexes'}``. Options in DeepFaceLab's order and types: ``numpy.int64`` for resolution,
  the dims and gan_patch_size, ``numpy.float64`` for the powers, plain int/bool/str otherwise.
  ``loss_history`` has one ``[src_loss, dst_loss]`` per iteration. ``sample_for_preview`` and
  ``choosed_gpu_indexes`` are None (DeepFaceLab picks new preview samples and asks for the GPU).
* ``<name>_SAEHD_summary.txt``: DeepFaceLab's framed summary (informational; DeepFaceLab rewrites it
  on its next save).

DeepFaceLab treats iteration 0 as a new model (it asks for options and initialises the weights), and
its prompts only accept resolutions 64-640 (a multiple of 16, 32 with ``-d``); a model outside that
cannot be expressed and is refused with one line.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchsae.config import Config
from torchsae.dfl.errors import DFLExportError
from torchsae.dfl.model_options import DATA_SUFFIX, MAXIMA, OPTION_MAP, SPECIAL_OPTIONS
from torchsae.dfl.unpickle import compat_dumps
from torchsae.fileio import atomic_write_bytes

# DeepFaceLab's SAEHD options in the order it stores them (a model written by its last commit).
OPTION_ORDER = (
    "resolution",
    "face_type",
    "models_opt_on_gpu",
    "archi",
    "ae_dims",
    "e_dims",
    "d_dims",
    "d_mask_dims",
    "masked_training",
    "eyes_mouth_prio",
    "uniform_yaw",
    "blur_out_mask",
    "adabelief",
    "lr_dropout",
    "random_warp",
    "random_hsv_power",
    "true_face_power",
    "face_style_power",
    "bg_style_power",
    "ct_mode",
    "clipgrad",
    "pretrain",
    "autobackup_hour",
    "write_preview_history",
    "target_iter",
    "random_src_flip",
    "random_dst_flip",
    "batch_size",
    "gan_power",
    "gan_patch_size",
    "gan_dims",
)
INT64_OPTIONS = ("resolution", "ae_dims", "e_dims", "d_dims", "d_mask_dims", "gan_patch_size")
FLOAT64_OPTIONS = ("random_hsv_power", "true_face_power", "face_style_power", "bg_style_power", "gan_power")
# Options only DeepFaceLab has (how it runs, not what it computes), with its defaults.
DFL_ONLY_DEFAULTS: dict[str, Any] = {
    "models_opt_on_gpu": True,
    "autobackup_hour": 0,
    "write_preview_history": False,
    "target_iter": 0,
}
# TorchSAE settings that change training but have no DeepFaceLab option (DeepFaceLab's fixed
# behaviour is the TorchSAE default): reported when they differ from it.
TORCHSAE_ONLY = (
    ("optim", "lr"),
    ("data", "mask_policy"),
    ("train", "amp"),
    ("train", "grad_accum"),
    ("train", "max_steps"),
)
RESOLUTION_RANGE = (64, 640)
DFL_FACE_TYPES = ("h", "mf", "f", "wf", "head")


@dataclass
class ExportedOptions:
    """The options dict to store, and what could not be expressed in it."""

    options: dict[str, Any]
    dropped: dict[str, Any] = field(default_factory=dict)  # "section.key" -> value


def check_expressible(config: Config, step: int, source: str) -> None:
    """Raise DFLExportError (one line) when DeepFaceLab cannot hold this model as it is."""
    m = config.model
    low, high = RESOLUTION_RANGE
    multiple = 32 if m.has("d") else 16
    if not low <= m.resolution <= high or m.resolution % multiple:
        raise DFLExportError(
            f"{source}: resolution {m.resolution} cannot be a DeepFaceLab model: DeepFaceLab's SAEHD takes "
            f"{low}-{high} in multiples of {multiple} for archi {m.archi!r}"
        )
    if m.face_type not in DFL_FACE_TYPES:
        raise DFLExportError(f"{source}: face_type {m.face_type!r} has no DeepFaceLab equivalent")
    dims = {
        "ae_dims": m.ae_dims,
        "e_dims": m.resolved_e_dims,
        "d_dims": m.resolved_d_dims,
        "d_mask_dims": m.resolved_d_mask_dims,
        "gan_dims": m.gan_dims,
    }
    for key, value in dims.items():
        if value > MAXIMA[key]:
            raise DFLExportError(f"{source}: {key} {value} is above DeepFaceLab's maximum {MAXIMA[key]}")
    if step < 1:
        raise DFLExportError(
            f"{source}: step {step}: DeepFaceLab treats iteration 0 as a new model and would initialise "
            "its weights afresh; train at least one step first"
        )


def _config_value(config: Config, section: str, key: str) -> Any:
    """A config value with the model's derived defaults resolved (d_mask_dims None -> its value)."""
    resolved = {
        ("model", "e_dims"): "resolved_e_dims",
        ("model", "d_dims"): "resolved_d_dims",
        ("model", "d_mask_dims"): "resolved_d_mask_dims",
        ("model", "gan_patch_size"): "resolved_gan_patch_size",
    }
    part = getattr(config, section)
    if (section, key) in resolved and hasattr(part, resolved[(section, key)]):
        return getattr(part, resolved[(section, key)])
    return getattr(part, key)


def _typed(key: str, value: Any) -> Any:
    """``value`` as DeepFaceLab's type for option ``key``."""
    if key in INT64_OPTIONS:
        return np.int64(value)
    if key in FLOAT64_OPTIONS:
        return np.float64(value)
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def config_to_options(
    config: Config, carried: Mapping[str, Any] | None = None, imported_max_steps: int | None = None
) -> ExportedOptions:
    """The DeepFaceLab options dict for ``config`` (inverse of ``options_to_config``).

    ``carried`` is the original DeepFaceLab options of an imported model (``imported_from.options``
    in the checkpoint): options TorchSAE does not have (``models_opt_on_gpu``, ``autobackup_hour``,
    ``write_preview_history``, a fork's extra options) and ``lr_dropout='cpu'`` are written back as
    they were; ``target_iter`` too when ``train.max_steps`` is still ``imported_max_steps``, what the
    import derived from it.
    Otherwise DeepFaceLab's defaults are written. TorchSAE settings DeepFaceLab lacks are returned in
    ``dropped`` when they differ from DeepFaceLab's fixed behaviour.
    """
    carried = dict(carried or {})
    options: dict[str, Any] = {}
    by_option = {dfl_key: (section, key) for dfl_key, (section, key, _kind) in OPTION_MAP.items()}
    for dfl_key in OPTION_ORDER:
        if dfl_key in by_option:
            value = _config_value(config, *by_option[dfl_key])
        elif dfl_key == "adabelief":
            value = config.optim.optimizer == "adabelief"
        elif dfl_key == "lr_dropout":
            if not config.optim.lr_dropout:
                value = "n"
            else:  # 'cpu' (masks made on the CPU) is 'y' to TorchSAE; keep the user's choice
                value = carried["lr_dropout"] if carried.get("lr_dropout") in ("y", "cpu") else "y"
        elif dfl_key == "target_iter":
            keep = "target_iter" in carried and imported_max_steps == config.train.max_steps
            value = carried["target_iter"] if keep else DFL_ONLY_DEFAULTS["target_iter"]
        else:
            value = carried.get(dfl_key, DFL_ONLY_DEFAULTS[dfl_key])
        options[dfl_key] = _typed(dfl_key, value)
    for key, value in carried.items():  # a fork's options, kept as they came
        if key not in options and key not in OPTION_MAP and key not in SPECIAL_OPTIONS:
            options[key] = value
    defaults = Config()
    dropped = {}
    for section, key in TORCHSAE_ONLY:
        value = getattr(getattr(config, section), key)
        if value != getattr(getattr(defaults, section), key):
            if (section, key) == ("train", "max_steps") and imported_max_steps == value:
                continue  # came from the model's own target_iter, written back above
            dropped[f"{section}.{key}"] = value
    return ExportedOptions(options, dropped)


def describe_dropped(dropped: Mapping[str, Any]) -> str:
    """One line naming the TorchSAE settings a DeepFaceLab model cannot hold."""
    shown = ", ".join(f"{key}={value!r}" for key, value in dropped.items())
    return f"TorchSAE settings DeepFaceLab does not have (not written; DeepFaceLab uses its own): {shown}"


def loss_history(history: Mapping[str, list], iteration: int) -> list[list[float]]:
    """TorchSAE's logged ``loss_a``/``loss_b`` points as DeepFaceLab's per-iteration history.

    DeepFaceLab keeps one ``[src_loss, dst_loss]`` per iteration (src = B, dst = A); TorchSAE logs
    one point per ``log_interval`` steps, so each logged value is held until the next one, from the
    first logged step to ``iteration``. Empty when nothing was logged.
    """
    try:
        a = {int(step): float(value) for step, value in history.get("loss_a", [])}
        b = {int(step): float(value) for step, value in history.get("loss_b", [])}
    except (TypeError, ValueError):
        return []
    steps = sorted(set(a) & set(b))
    steps = [s for s in steps if 1 <= s <= iteration]
    if not steps:
        return []
    out: list[list[float]] = []
    current = steps[0]
    following = iter(steps[1:])
    upcoming = next(following, None)
    for step in range(steps[0], iteration + 1):
        if upcoming is not None and step >= upcoming:
            current, upcoming = upcoming, next(following, None)
        out.append([b[current], a[current]])
    return out


def model_data(iteration: int, options: dict[str, Any], history: list[list[float]]) -> dict[str, Any]:
    """The ``data.dat`` dict DeepFaceLab reads."""
    return {
        "iter": int(iteration),
        "options": options,
        "loss_history": history,
        "sample_for_preview": None,
        "choosed_gpu_indexes": None,
    }


def summary_text(
    name: str, iteration: int, options: Mapping[str, Any], running_on: list[tuple[str, str]]
) -> str:
    """DeepFaceLab's ``<name>_SAEHD_summary.txt`` layout: a 38+ column frame of right-aligned keys."""
    rows = [("Model name", f"{name}_SAEHD"), ("Current iteration", str(iteration))]
    option_rows = [(key, str(value)) for key, value in options.items()]
    every = rows + option_rows + running_on
    key_width = max(len(k) for k, _ in every)
    value_width = max(len(v) for _, v in every)
    width = key_width + value_width + 8  # "== " + key + ": " + value + " =="
    inner = width - 4

    def line(key: str, value: str) -> str:
        return f"== {key.rjust(key_width)}: {value.ljust(value_width)} =="

    blank = "==" + " " * inner + "=="
    out = [" Model Summary ".center(width, "="), blank]
    out += [line(rows[0][0], rows[0][1]), blank, line(rows[1][0], rows[1][1])]
    out += [blank, "==" + " Model Options ".center(inner, "-") + "==", blank]
    out += [line(k, v) for k, v in option_rows]
    out += [blank, "==" + " Running On ".center(inner, "-") + "==", blank]
    out += [line(k, v) for k, v in running_on]
    out += [blank, "=" * width]
    return "\n".join(out)


def model_file(folder: Path, name: str, part: str) -> Path:
    """``<folder>/<name>_SAEHD_<part>``: ``part`` is ``encoder.npy``, ``data.dat``, ``summary.txt``..."""
    return folder / f"{name}_SAEHD_{part}"


def write_model_folder(
    folder: Path, name: str, files: Mapping[str, Any], *, force: bool = False
) -> list[Path]:
    """Write ``files`` (``part`` -> object to pickle, or str for text) into ``folder`` for model ``name``.

    Refuses (DFLExportError, one line) when any of the files exists and ``force`` is off, or when
    ``folder`` is not a folder. Every pickle is checked to read back through the restricted
    unpickler and written atomically; ``data.dat``, by which DeepFaceLab finds a model, goes last, so
    an interrupted export of a new model leaves no model DeepFaceLab would list. Returns the paths.
    """
    if folder.exists() and not folder.is_dir():
        raise DFLExportError(f"{folder}: exists and is not a folder")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise DFLExportError(f"{name!r}: not a usable model name")
    paths = {part: model_file(folder, name, part) for part in files}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise DFLExportError(
            f"{existing[0]}{more}: already exist(s) (model {name!r} in {folder}); pass --force to replace"
        )
    payloads: dict[str, bytes] = {}
    for part, obj in files.items():
        if isinstance(obj, str):
            payloads[part] = obj.encode("utf-8")
        else:
            try:
                payloads[part] = compat_dumps(obj)
            except TypeError as exc:  # an object DeepFaceLab (and our reader) could not load
                raise DFLExportError(f"{paths[part]}: cannot be written for DeepFaceLab: {exc}") from exc
    folder.mkdir(parents=True, exist_ok=True)
    data_part = DATA_SUFFIX.removeprefix("_SAEHD_")
    for part in sorted(payloads, key=lambda p: p == data_part):
        atomic_write_bytes(paths[part], payloads[part])
    return [paths[p] for p in files]
