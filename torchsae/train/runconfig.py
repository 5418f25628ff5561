"""Resolve one run's Config from defaults, a preset, a YAML file, command-line flags and a checkpoint.

Precedence, lowest first: ``Config()`` defaults -> ``--model-size`` preset -> ``--config FILE`` ->
explicit flags. When resuming, the checkpoint's stored config replaces the first two, so
``torchsae train --resume models/last.pth`` needs no other flag; anything given explicitly still
overrides it (e.g. a larger ``--max-steps``), except the architecture: a flag or file that
contradicts the checkpoint's model is an error naming both values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchsae.config import Config, load_config, preset
from torchsae.errors import ConfigError
from torchsae.train.checkpoint import (
    SNAPSHOT_DIR,
    CheckpointError,
    find_last_checkpoint,
    intact_copies_hint,
    read_checkpoint,
)

Overrides = dict[str, dict[str, Any]]


def _raw_file_overrides(path: Path) -> Overrides:
    """The sections and keys the YAML file sets explicitly (validated through ``load_config``)."""
    load_config(path)  # full validation with errors naming the file
    import json

    import yaml

    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    return {section: dict(values or {}) for section, values in (data or {}).items()}


def merge_overrides(*layers: Overrides) -> Overrides:
    """Later layers win key by key; ``None`` values mean "not given" and are dropped."""
    merged: Overrides = {}
    for layer in layers:
        for section, values in layer.items():
            for key, value in values.items():
                if value is not None:
                    merged.setdefault(section, {})[key] = value
    return merged


# Model fields that may change on resume: they shape only the GAN discriminator, which then starts
# afresh (torchsae.train.adversarial.drop_reshaped_gan), as in DeepFaceLab.
RESHAPEABLE_FIELDS = ("gan_patch_size", "gan_dims")


def architecture_conflicts(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``'key: checkpoint X, asked Y'`` for every model field that differs (GAN shape excepted)."""
    return [
        f"{key}: checkpoint {stored.get(key)!r}, asked {wanted.get(key)!r}"
        for key in sorted(set(stored) | set(wanted))
        if stored.get(key) != wanted.get(key) and key not in RESHAPEABLE_FIELDS
    ]


def resolve_run_config(
    flags: Overrides,
    *,
    config_file: str | Path | None = None,
    model_size: int | None = None,
    resume: str | Path | None = None,
) -> tuple[Config, Path | None]:
    """Return the validated Config and the checkpoint to resume from (None for a fresh run).

    ``flags`` holds only the options given on the command line (``{section: {key: value}}``).
    Without ``resume``, the run folder's ``models/last.pth`` is resumed automatically when present,
    which is what a restarted ``torchrun --max-restarts`` job relies on.
    """
    file_layer = _raw_file_overrides(Path(config_file)) if config_file is not None else {}
    explicit = merge_overrides(file_layer, flags)
    automatic = resume is None
    if resume is not None:
        resume = Path(resume)
        models = resume.parent
        if models.name == SNAPSHOT_DIR and models.parent.name == "models":
            models = models.parent  # models/snapshots/step_*.pth belongs to the same run folder
        if "run_dir" not in explicit.get("train", {}) and models.name == "models":
            explicit = merge_overrides(explicit, {"train": {"run_dir": str(models.parent)}})
    else:
        run_dir = explicit.get("train", {}).get("run_dir", Config().train.run_dir)
        resume = find_last_checkpoint(run_dir)

    if resume is None:
        base = Config()
        if model_size is not None:
            base.model = preset(model_size)
        config = base.updated(explicit)
        return config.validate(), None

    try:
        stored = read_checkpoint(resume, mmap=True).config  # the weights are read by train()
    except CheckpointError as exc:
        if not automatic:
            raise
        raise CheckpointError(f"{exc}{intact_copies_hint(resume.parent)}") from exc
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise ConfigError(f"{resume}: the stored config is not a mapping of sections")
    try:
        base = Config.from_dict(stored)
    except ConfigError as exc:
        raise ConfigError(f"{resume}: the stored config is invalid: {exc}") from exc
    wanted_model = dict(stored["model"])
    if model_size is not None:
        wanted_model.update(preset(model_size).__dict__)
    wanted_model.update(explicit.get("model", {}))
    conflicts = architecture_conflicts(stored["model"], wanted_model)
    if conflicts:
        raise ConfigError(
            f"{resume}: the command contradicts the checkpoint's architecture ({'; '.join(conflicts)}); "
            "drop those options to resume, or start a new run in another --run-dir"
        )
    config = base.updated(explicit)
    if "pretrain" not in explicit.get("train", {}):
        # pretraining is asked for per run, never inherited: resuming without it ends it (see
        # torchsae.train.pretrain), as answering DeepFaceLab's pretrain question with 'n' does
        config.train.pretrain = False
    return config.validate(), resume
