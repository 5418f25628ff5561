"""``torchsae train``: the training command, whose options are the config fields' (declared once, in
``torchsae.config``, and built into click options by ``torchsae.cli.options``).

``launch/train.py`` (the torchrun entry point) runs this same click command. Every option defaults to
"not given" (None): the value then comes from ``--config FILE``, from the checkpoint being resumed, or
from the Config defaults, in that order (see ``torchsae.train.runconfig``); ``--help`` shows the last.

A is DeepFaceLab's dst (faces to replace), B is src (the identity rendered in): ``--random-flip-a`` is
DeepFaceLab's ``random_dst_flip`` (default on), ``--random-flip-b`` its ``random_src_flip`` (default off).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from torchsae.cli.options import ConfigOption, config_options, model_size_option, option_flags, option_map
from torchsae.errors import TorchSAEError

# click's parameter name -> (config section, config key), and -> its flag: from the config fields'
# OptionSpecs (torchsae.config), the one declaration of every training option
OPTION_MAP: dict[str, tuple[str, str]] = option_map("train")
FLAGS: dict[str, str] = option_flags("train")


def train_options(func):
    """Apply every training option to a click command: the three that are not config fields, then
    the config fields' options (``torchsae.cli.options``)."""
    func = config_options("train")(func)
    func = model_size_option()(func)
    func = click.option(
        "--resume",
        type=click.Path(dir_okay=False),
        help="Resume from this checkpoint, e.g. a copy or models/snapshots/step_00010000.pth.",
        show_default="RUN_DIR/models/last.pth if present",
        cls=ConfigOption,
    )(func)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="YAML/JSON config; flags override it.",
    )(func)


def name_flags(message: str) -> str:
    """Add the command-line flag to each config key a message names: ``batch_size must be >= 1`` ->
    ``batch_size (--batch-size) must be >= 1``; ``data.data_dir_a is not set`` -> ``data.data_dir_a
    (--data-dir-a) is not set``. Qualified keys are matched anywhere, bare ones only where a message
    (or a ``path: `` prefix) starts with them; a flag the message already names is not repeated."""
    for name, (section, key) in OPTION_MAP.items():
        flag = FLAGS[name]
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


def init_options(func):
    """``--init-from-bank BANK`` with ``--init-encoder/--init-a/--init-b IDENTITY``: a fresh DF run's
    parts start from module-bank parts (``torchsae.modular.hybrid``); ignored on resume."""
    for flag, text in (
        ("--init-b", "Bank identity whose decoder initialises decoder_b (B, src)."),
        ("--init-a", "Bank identity whose decoder initialises decoder_a (A, dst)."),
        ("--init-encoder", "Bank identity whose encoder initialises encoder + inter (default: --init-a's)."),
    ):
        func = click.option(flag, default=None, metavar="IDENTITY", help=text)(func)
    return click.option(
        "--init-from-bank",
        type=click.Path(file_okay=False),
        default=None,
        help="Module bank (torchsae bank) whose parts initialise a fresh DF run's parts.",
    )(func)


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@train_options
@init_options
def train_cmd(
    config_file: str | None,
    resume: str | None,
    model_size: str | None,
    init_from_bank: str | None,
    init_encoder: str | None,
    init_a: str | None,
    init_b: str | None,
    **options,
) -> None:
    """Train SAEHD on A (dst) and B (src) faces; resumes RUN_DIR/models/last.pth automatically.

    \b
    Single process:   torchsae train --data-dir-a data/A --data-dir-b data/B --model-size 256 --amp
    Several GPUs:     torchrun --nproc_per_node=4 launch/train.py --data-dir-a ... (same options)

    A default below applies where neither --config nor the checkpoint being resumed sets the option.
    """
    from torchsae.train.hooks import TrainHooks
    from torchsae.train.report import model_size_note
    from torchsae.train.runconfig import resolve_run_config
    from torchsae.train.trainer import train

    hooks = click.get_current_context().obj  # main_entry(..., hooks=): tests' and tools' hooks
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
        factory = _init_factory(init_from_bank, init_encoder, init_a, init_b, checkpoint)
        hooks = hooks if isinstance(hooks, TrainHooks) else None
        train(config, resume=checkpoint, hooks=hooks, task_factory=factory)
    except TorchSAEError as exc:
        raise click.ClickException(name_flags(str(exc))) from exc
    except KeyboardInterrupt:
        click.echo("Interrupted: stopped without saving.", err=True)
        sys.exit(130)


def _init_factory(bank, encoder, a, b, checkpoint):
    """The hybrid task factory for a fresh run with ``--init-from-bank`` (None: plain SAEHD)."""
    if bank is None:
        if encoder or a or b:
            raise TorchSAEError("--init-encoder/--init-a/--init-b: name the bank with --init-from-bank")
        return None
    if checkpoint is not None:
        if _is_main_process():
            click.echo(
                f"--init-from-bank ignored: resuming {checkpoint} (bank parts initialise fresh runs only)"
            )
        return None
    from torchsae.modular.hybrid import HybridInit, hybrid_task_factory

    return hybrid_task_factory(HybridInit.from_options(bank, encoder, a, b))


def _is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a plain process): the one that prints notes."""
    import os

    return os.environ.get("RANK", "0") == "0"


def main_entry(argv: list[str] | None = None, prog_name: str | None = None, hooks: object = None) -> None:
    """Run ``train_cmd`` as a standalone program (``launch/train.py``); ``hooks`` (a
    ``train.hooks.TrainHooks``) reach ``train()`` (the tests' torchrun entry point passes them)."""
    train_cmd.main(args=argv, prog_name=prog_name or Path(sys.argv[0]).name, obj=hooks)
