"""``torchsae train``: the one definition of the training options.

``launch/train.py`` (the torchrun entry point) runs this same click command, so the option list lives
here only. Every option defaults to "not given" (None): the value then comes from ``--config FILE``,
from the checkpoint being resumed, or from the Config defaults, in that order (see
``torchsae.train.runconfig``).

A is DeepFaceLab's dst (faces to replace), B is src (the identity rendered in): ``--random-flip-a`` is
DeepFaceLab's ``random_dst_flip`` (default on), ``--random-flip-b`` its ``random_src_flip`` (default off).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from torchsae.cli import MODEL_DIMS_OPTIONS
from torchsae.config import (
    AMP_MODES,
    BACKENDS,
    CT_MODES,
    FACE_TYPES,
    MASK_POLICIES,
    OPTIMIZERS,
    PROGRESS_MODES,
)
from torchsae.errors import TorchSAEError

# option name (click's python name) -> (config section, config key)
OPTION_MAP: dict[str, tuple[str, str]] = {
    "data_dir_a": ("data", "data_dir_a"),
    "data_dir_b": ("data", "data_dir_b"),
    "backend": ("data", "backend"),
    "workers": ("data", "workers"),
    "mask_policy": ("data", "mask_policy"),
    "random_warp": ("data", "random_warp"),
    "random_flip_a": ("data", "random_flip_a"),
    "random_flip_b": ("data", "random_flip_b"),
    "random_hsv_power": ("data", "random_hsv_power"),
    "ct_mode": ("data", "ct_mode"),
    "uniform_yaw": ("data", "uniform_yaw"),
    "pretrain_dir": ("data", "pretrain_dir"),
    "index_dir": ("data", "index_dir"),
    "archi": ("model", "archi"),
    "resolution": ("model", "resolution"),
    "face_type": ("model", "face_type"),
    "ae_dims": ("model", "ae_dims"),
    "e_dims": ("model", "e_dims"),
    "d_dims": ("model", "d_dims"),
    "d_mask_dims": ("model", "d_mask_dims"),
    "gan_patch_size": ("model", "gan_patch_size"),
    "gan_dims": ("model", "gan_dims"),
    "masked_training": ("loss", "masked_training"),
    "eyes_mouth_prio": ("loss", "eyes_mouth_prio"),
    "face_style_power": ("loss", "face_style_power"),
    "bg_style_power": ("loss", "bg_style_power"),
    "true_face_power": ("loss", "true_face_power"),
    "gan_power": ("loss", "gan_power"),
    "blur_out_mask": ("loss", "blur_out_mask"),
    "optimizer": ("optim", "optimizer"),
    "lr": ("optim", "lr"),
    "lr_dropout": ("optim", "lr_dropout"),
    "clipgrad": ("optim", "clipgrad"),
    "batch_size": ("train", "batch_size"),
    "max_steps": ("train", "max_steps"),
    "preview_interval": ("train", "preview_interval"),
    "save_interval": ("train", "save_interval"),
    "log_interval": ("train", "log_interval"),
    "keep": ("train", "keep"),
    "snapshot_every": ("train", "snapshot_every"),
    "autobackup_hours": ("train", "autobackup_hours"),
    "spike_factor": ("train", "spike_factor"),
    "amp": ("train", "amp"),
    "seed": ("train", "seed"),
    "run_dir": ("train", "run_dir"),
    "device": ("train", "device"),
    "wandb": ("train", "wandb"),
    "grad_accum": ("train", "grad_accum"),
    "memory_budget": ("train", "memory_budget"),
    "compile": ("train", "compile"),
    "pretrain": ("train", "pretrain"),
    "progress": ("train", "progress"),
}


def _flag(name: str, help_text: str):
    return click.option(f"--{name}/--no-{name}", default=None, help=help_text)


TRAIN_OPTIONS = [
    click.option(
        "--data-dir-a", type=click.Path(file_okay=False), help="A faces (DeepFaceLab's dst: to replace)."
    ),
    click.option(
        "--data-dir-b", type=click.Path(file_okay=False), help="B faces (DeepFaceLab's src: the identity)."
    ),
    click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="YAML/JSON config; flags override it.",
    ),
    click.option(
        "--resume",
        type=click.Path(dir_okay=False),
        help="Resume from this checkpoint, e.g. a copy or models/snapshots/step_00010000.pth "
        "(default: RUN_DIR/models/last.pth if present).",
    ),
    click.option("--run-dir", help="Run folder holding models/ and logs/ (default: the current folder)."),
    click.option(
        "--model-size", type=click.Choice(["128", "256", "384"]), help="Preset resolution and dims."
    ),
    click.option("--archi", help="df or liae with options u, d, t, c, e.g. liae-ud."),
    click.option("--resolution", type=int, help="Face resolution (with explicit dims)."),
    click.option("--face-type", type=click.Choice(FACE_TYPES)),
    *MODEL_DIMS_OPTIONS,
    click.option(
        "--batch-size", type=int, help="Per rank and per side; the global batch is this x world size."
    ),
    click.option("--max-steps", type=int),
    click.option("--preview-interval", type=int),
    click.option("--save-interval", type=int),
    click.option("--log-interval", type=int),
    click.option(
        "--progress",
        type=click.Choice(PROGRESS_MODES),
        help="Console progress: bar (tqdm), plain (one log line per --log-interval: time, step, ms/step, "
        "samples/s, loss A, loss B, ETA), none; auto (default): the bar on a terminal, plain lines when "
        "stderr is a file or pipe (TORCHSAE_NO_PROGRESS=1 also means no bar).",
    ),
    click.option("--keep", type=int, help="Numbered checkpoint copies to keep besides last.pth."),
    click.option(
        "--snapshot-every",
        type=int,
        help="Also keep a snapshot every N steps forever (models/snapshots/); 0 (default): none.",
    ),
    click.option(
        "--autobackup-hours",
        type=float,
        help="Also keep a snapshot every H hours of training (DeepFaceLab's autobackup); 0: off.",
    ),
    click.option(
        "--spike-factor",
        type=float,
        help="A loss above this x its running median counts as a bad step (default 10); 0: off.",
    ),
    click.option(
        "--amp",
        type=click.Choice(AMP_MODES),
        is_flag=False,
        flag_value="auto",
        help="Mixed precision: bare --amp = bf16 where supported; --amp fp16 adds a GradScaler.",
    ),
    click.option("--seed", type=int),
    click.option("--lr", type=float),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS)),
    _flag("lr-dropout", "Bernoulli(0.3) update mask plus cosine lr (DeepFaceLab's lr_dropout)."),
    _flag("clipgrad", "Clip the global gradient norm at 1.0."),
    _flag("masked-training", "Losses inside the blurred face mask only."),
    _flag("eyes-mouth-prio", "Extra L1 weight on eyes and mouth."),
    _flag("random-warp", "DeepFaceLab's random warp of the inputs."),
    _flag("random-flip-a", "Random flips of A (DeepFaceLab's random_dst_flip)."),
    _flag("random-flip-b", "Random flips of B (DeepFaceLab's random_src_flip)."),
    _flag("uniform-yaw", "Sample faces uniformly over 128 yaw bins (DFL's uniform_yaw)."),
    click.option(
        "--random-hsv-power", type=float, help="0-0.3: random hue/sat/value shift of warped B (DFL's)."
    ),
    click.option(
        "--ct-mode", type=click.Choice(CT_MODES), help="Colour transfer of B towards random A faces."
    ),
    click.option("--mask-policy", type=click.Choice(MASK_POLICIES)),
    click.option("--face-style-power", type=float, help="0-100: B swap's face colours towards A's."),
    click.option("--bg-style-power", type=float, help="0-100: swap's background towards A's."),
    click.option("--true-face-power", type=float, help="0-1, df only: code discriminator weight."),
    click.option("--gan-power", type=float, help="0-5: U-Net patch GAN on B's reconstruction."),
    click.option("--gan-patch-size", type=int, help="GAN discriminator patch size (default res/8)."),
    click.option("--gan-dims", type=int, help="GAN discriminator base channels (default 16)."),
    _flag("blur-out-mask", "Blur the targets' background near the face mask (DFL's blur_out_mask)."),
    _flag("pretrain", "Pretrain on --pretrain-dir; resuming without it leaves pretraining."),
    click.option(
        "--pretrain-dir",
        type=click.Path(file_okay=False),
        help="Generic faces for --pretrain (both sides; DFL's pretraining_data_path).",
    ),
    click.option(
        "--index-dir",
        type=click.Path(file_okay=False),
        help="Keep the facesets' side indexes here instead of in each faceset's .torchsae folder "
        "(read-only facesets); default: $TORCHSAE_INDEX_DIR, else beside the faces.",
    ),
    click.option("--backend", type=click.Choice(BACKENDS)),
    click.option("--workers", type=int, help="Data-loading worker processes per rank."),
    click.option("--grad-accum", type=int),
    click.option(
        "--memory-budget",
        help="Per-GPU memory to fit the step in, e.g. 8GiB (GPU default: its free memory): picks the "
        "micro-batch, gradient accumulation, activation recompute and AMP; prints the plan.",
    ),
    _flag("compile", "torch.compile the model (falls back to eager with a warning if it fails)."),
    click.option("--device", help="auto (default), cpu, cuda or cuda:N."),
    _flag("wandb", "Also log to Weights & Biases (WANDB_MODE=offline works without an account)."),
]


def train_options(func):
    """Apply every training option to a click command."""
    for option in reversed(TRAIN_OPTIONS):
        func = option(func)
    return func


def name_flags(message: str) -> str:
    """Add the command-line flag to each config key a message names: ``batch_size must be >= 1`` ->
    ``batch_size (--batch-size) must be >= 1``; ``data.data_dir_a is not set`` -> ``data.data_dir_a
    (--data-dir-a) is not set``. Qualified keys are matched anywhere, bare ones only where a message
    (or a ``path: `` prefix) starts with them; a flag the message already names is not repeated."""
    for name, (section, key) in OPTION_MAP.items():
        flag = "--" + name.replace("_", "-")
        if re.search(re.escape(flag) + r"(?![\w-])", message):
            continue
        qualified = re.compile(rf"(?<![\w.]){section}\.{key}\b(?! \(--)")
        if qualified.search(message):
            message = qualified.sub(lambda m, flag=flag: f"{m.group(0)} ({flag})", message, count=1)
            continue
        bare = re.compile(rf"^((?:\S+: )?){key}\b(?![.(])(?! \(--)")
        message = bare.sub(lambda m, key=key, flag=flag: f"{m.group(1)}{key} ({flag})", message, count=1)
    return message


def flags_to_overrides(options: dict) -> dict[str, dict]:
    """``{section: {key: value}}`` for the options actually given (None means not given)."""
    overrides: dict[str, dict] = {}
    for name, (section, key) in OPTION_MAP.items():
        value = options.get(name)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return overrides


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@train_options
def train_cmd(config_file: str | None, resume: str | None, model_size: str | None, **options) -> None:
    """Train SAEHD on A (dst) and B (src) faces; resumes RUN_DIR/models/last.pth automatically.

    \b
    Single process:   torchsae train --data-dir-a data/A --data-dir-b data/B --model-size 256 --amp
    Several GPUs:     torchrun --nproc_per_node=4 launch/train.py --data-dir-a ... (same options)
    """
    from torchsae.train.report import model_size_note
    from torchsae.train.runconfig import resolve_run_config
    from torchsae.train.trainer import train

    try:
        config, checkpoint = resolve_run_config(
            flags_to_overrides(options),
            config_file=config_file,
            model_size=int(model_size) if model_size else None,
            resume=resume,
        )
        note = model_size_note(int(model_size) if model_size else None, config.model)
        if note and _is_main_process():
            click.echo(note)
        train(config, resume=checkpoint)
    except TorchSAEError as exc:
        raise click.ClickException(name_flags(str(exc))) from exc
    except KeyboardInterrupt:
        click.echo("Interrupted: stopped without saving.", err=True)
        sys.exit(130)


def _is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a plain process): the one that prints notes."""
    import os

    return os.environ.get("RANK", "0") == "0"


def main_entry(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run ``train_cmd`` as a standalone program (``launch/train.py``)."""
    train_cmd.main(args=argv, prog_name=prog_name or Path(sys.argv[0]).name)
