"""What ``torchsae info checkpoint FILE|RUN_DIR`` reads: a checkpoint's step, config summary, last
losses and format, and which checkpoints a run folder holds.

Why here and not in the trainer: it only reads files (the checkpoint is memory-mapped, so even a
large model answers at once) and must not depend on how the trainer saves them. A run folder holds
``models/last.pth``, the retained copies ``models/step_XXXXXXXX.pth`` and the spaced snapshots kept
for good, ``models/snapshots/step_XXXXXXXX.pth``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchsae.errors import TorchSAEError

LAST_NAME = "last.pth"
SNAPSHOTS = "snapshots"


def checkpoint_files(models_dir: str | Path) -> dict[str, Any]:
    """``{"last": {...} | None, "copies": [...], "snapshots": [...]}``; each entry has ``path`` and
    ``bytes`` (copies and snapshots also ``step``, oldest first). The folder is scanned by the
    checkpoint module's own listing, so what ``info`` shows is what the trainer prunes and restores."""
    from torchsae.train.checkpoint import retained_checkpoints, snapshots

    models_dir = Path(models_dir)
    last = models_dir / LAST_NAME

    def entries(found: list[tuple[int, Path]]) -> list[dict[str, Any]]:
        return [{"step": step, "path": str(path), "bytes": path.stat().st_size} for step, path in found]

    return {
        "last": {"path": str(last), "bytes": last.stat().st_size} if last.is_file() else None,
        "copies": entries(retained_checkpoints(models_dir)),
        "snapshots": entries(snapshots(models_dir)),
    }


def resolve_checkpoint_target(target: str | Path) -> tuple[Path, Path | None]:
    """``(checkpoint file, models folder or None)`` for a file, a run folder or its ``models`` folder."""
    target = Path(target)
    if target.is_file():
        models = target.parent if target.parent.name in ("models", SNAPSHOTS) else None
        if models is not None and models.name == SNAPSHOTS:
            models = models.parent
        return target, models
    for models in (target / "models", target):
        if (models / LAST_NAME).is_file():
            return models / LAST_NAME, models
    if target.is_dir():
        raise TorchSAEError(f"{target}: no models/{LAST_NAME} here (give a run folder or a .pth file)")
    raise TorchSAEError(f"{target}: no such checkpoint file or run folder")


def _last_value(points: Any) -> list[float] | None:
    if isinstance(points, list | tuple) and points:
        last = points[-1]
        if isinstance(last, list | tuple) and len(last) == 2:
            return [int(last[0]), float(last[1])]
    return None


def _model_summary(model: dict[str, Any]) -> dict[str, Any]:
    """The shape as built: e/d/d_mask dims resolved as DeepFaceLab rounds them."""
    from torchsae.config import ModelConfig

    keys = ("archi", "resolution", "face_type", "ae_dims", "e_dims", "d_dims", "d_mask_dims")
    summary = {key: model.get(key) for key in keys}
    try:
        built = ModelConfig(**model)
        summary.update(
            e_dims=built.resolved_e_dims, d_dims=built.resolved_d_dims, d_mask_dims=built.resolved_d_mask_dims
        )
    except (TypeError, ValueError):  # a config from another version: show it as stored
        pass
    return summary


def checkpoint_info(target: str | Path) -> dict[str, Any]:
    """The JSON document of ``info checkpoint``."""
    from torchsae.train.checkpoint import FORMAT, read_checkpoint

    path, models = resolve_checkpoint_target(target)
    state = read_checkpoint(path, mmap=True)
    config = state.config or {}
    model, train, optim, data = (config.get(k) or {} for k in ("model", "train", "optim", "data"))
    metrics = state.metrics or {}
    history = metrics.get("history") or {}
    info: dict[str, Any] = {
        "file": str(path),
        "format": FORMAT,
        "version": state.source_version,  # as the file holds it (older versions are migrated on load)
        "task": state.task,
        "step": int(state.step),
        "imported_from": state.imported_from,
        "model": _model_summary(model),
        "params": sum(int(v.numel()) for v in state.model.values() if hasattr(v, "numel")),
        "train": {
            key: train.get(key)
            for key in ("batch_size", "max_steps", "amp", "grad_accum", "save_interval", "keep", "run_dir")
        },
        "optim": {key: optim.get(key) for key in ("optimizer", "lr", "lr_dropout", "clipgrad")},
        "data": {key: data.get(key) for key in ("data_dir_a", "data_dir_b", "mask_policy", "index_dir")},
        "losses": {
            "loss_a": _last_value(history.get("loss_a")),
            "loss_b": _last_value(history.get("loss_b")),
        },
        "skipped_steps": metrics.get("skipped_steps"),
        "elapsed_s": metrics.get("elapsed_s"),
        "ranks_saved": len(state.rng or {}),
        "discriminators": sorted((state.discriminators or {}).keys()),
        "optimizers": sorted((state.optimizers or {}).keys()),
        "checkpoints": checkpoint_files(models) if models is not None else None,
    }
    return info


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_checkpoint_info(info: dict[str, Any]) -> str:
    """The text ``info checkpoint`` prints."""
    from torchsae.train.report import format_duration

    m, t, o, d = info["model"], info["train"], info["optim"], info["data"]
    lines = [
        f"{info['file']}: step {info['step']:,} ({info['format']} version {info['version']})",
        f"  model        SAEHD {m['archi']} {m['resolution']} px, face type {m['face_type']}; "
        f"ae {m['ae_dims']}, e {m['e_dims']}, d {m['d_dims']}, d_mask {m['d_mask_dims']}; "
        f"{info['params']:,} parameters",
        f"  training     batch {t['batch_size']} per rank per side, max steps {t['max_steps']}, amp {t['amp']}; "
        f"{o['optimizer']} lr {o['lr']:g}, lr dropout {'on' if o['lr_dropout'] else 'off'}, "
        f"clipgrad {'on' if o['clipgrad'] else 'off'}",
        f"  data         A {d['data_dir_a']}, B {d['data_dir_b']}; mask policy {d['mask_policy']}"
        + (f"; index dir {d['index_dir']}" if d.get("index_dir") else ""),
    ]
    if info["imported_from"]:
        source = info["imported_from"].get("folder") or "?"
        lines.append(
            f"  imported     from DeepFaceLab {source} (model {info['imported_from'].get('model_name')})"
        )
    losses = info["losses"]
    if losses["loss_a"] or losses["loss_b"]:
        parts = [
            f"{label} {value[1]:.4f} (step {value[0]})"
            for label, value in (("A", losses["loss_a"]), ("B", losses["loss_b"]))
            if value
        ]
        lines.append(f"  last losses  {', '.join(parts)}")
    else:
        lines.append("  last losses  none recorded")
    extra = [f"{info['skipped_steps'] or 0} skipped steps"]
    if info["elapsed_s"]:
        extra.append(f"trained for {format_duration(float(info['elapsed_s']))}")
    extra.append(f"saved by {info['ranks_saved']} rank(s)" if info["ranks_saved"] else "no RNG/data state")
    if info["discriminators"]:
        extra.append(f"discriminators: {', '.join(info['discriminators'])}")
    lines.append(f"  state        {'; '.join(extra)}")
    files = info["checkpoints"]
    if files is not None:
        last = files["last"]
        lines.append(
            f"  last.pth     {last['path']} ({_mib(last['bytes'])})" if last else "  last.pth     none"
        )
        for key, label in (("copies", "copies"), ("snapshots", "snapshots")):
            entries = files[key]
            if not entries:
                lines.append(f"  {label:<12} none")
                continue
            lines.append(
                f"  {label:<12} {len(entries)}: " + ", ".join(f"step {e['step']:,}" for e in entries)
            )
            lines.extend(f"               {e['path']} ({_mib(e['bytes'])})" for e in entries)
    return "\n".join(lines)
