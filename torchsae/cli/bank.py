"""``torchsae bank``: modular autoencoders in a module bank (``torchsae.modular``).

\b
  torchsae bank train   --bank BANK --identity alice --data-dir faces/alice [train options]
  torchsae bank distill --bank BANK --identity carol --data-dir faces/carol --teacher alice
  torchsae bank adapt   --bank BANK --identity bob --data-dir faces/bob --into alice
  torchsae bank list    --bank BANK [--json]
  torchsae bank compose --bank BANK --encoder bob --decoder alice --output bob_to_alice.pth

The training commands take every ``torchsae train`` option (declared once, in the config fields:
``torchsae.cli.train.train_options``); ``--data-dir`` is the identity's faceset and ``--run-dir``
defaults to ``BANK/runs/IDENTITY-MODE``. A run resumes its ``models/last.pth`` as ``torchsae train``
does. Subcommands load lazily from ``BANK_COMMANDS`` (the ONNX part exports add theirs there).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click

from torchsae.cli import LazyGroup
from torchsae.cli.train import flags_to_overrides, name_flags, train_options
from torchsae.errors import TorchSAEError

# subcommand -> "module:attribute"
BANK_COMMANDS: dict[str, str] = {
    "train": "torchsae.cli.bank:bank_train_cmd",
    "distill": "torchsae.cli.bank:bank_distill_cmd",
    "adapt": "torchsae.cli.bank:bank_adapt_cmd",
    "list": "torchsae.cli.bank:bank_list_cmd",
    "compose": "torchsae.cli.bank:bank_compose_cmd",
}

# output suffix -> "module:function(bank, encoder, decoder, output, adapter=None)" for `bank compose`
COMPOSE_WRITERS: dict[str, str] = {
    ".pth": "torchsae.modular.compose:compose_checkpoint",
    ".onnx": "torchsae.modular.export:compose_onnx",
    ".dfm": "torchsae.modular.export:compose_onnx",
}

_CTX = {"help_option_names": ["-h", "--help"]}


@click.group("bank", cls=LazyGroup, lazy_commands=BANK_COMMANDS, context_settings=_CTX)
def bank_group() -> None:
    """Modular autoencoders: per-identity encoders, adapters and decoders in a module bank."""


def _bank_option(func):
    return click.option(
        "--bank", "bank_dir", required=True, type=click.Path(file_okay=False), help="The module bank folder."
    )(func)


def _identity_options(func):
    func = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="The identity's faceset (aligned faces); default: the resumed run's.",
    )(func)
    func = click.option("--identity", required=True, help="The identity's name in the bank.")(func)
    return _bank_option(func)


def _run_training(run, options: dict, config_file, resume, model_size, model_from_bank=None) -> None:
    """Resolve the Config as ``torchsae train`` does (flags, --config, the resumed checkpoint), then
    train ``run`` (a ``ModularRun``) through the generic loop."""
    from torchsae.modular.tasks import task_factory
    from torchsae.train.runconfig import resolve_run_config
    from torchsae.train.trainer import train

    data_dir = options.pop("data_dir", None)
    flags = flags_to_overrides(options)
    if data_dir is not None:
        flags.setdefault("data", {}).update(data_dir_a=data_dir, data_dir_b=data_dir)
    flags.setdefault("train", {}).setdefault(
        "run_dir", str(Path(run.bank) / "runs" / f"{run.identity}-{run.mode}")
    )
    if model_from_bank is not None:  # the adapter's model is the frozen encoder's
        from dataclasses import asdict

        flags.setdefault("model", {}).update(asdict(model_from_bank))
    try:
        resolve = lambda flags: resolve_run_config(  # noqa: E731
            flags, config_file=config_file, model_size=int(model_size) if model_size else None, resume=resume
        )
        config, checkpoint = resolve(flags)
        if checkpoint is None and not _archi_given(flags, config_file):
            flags.setdefault("model", {})["archi"] = "df"  # modular parts are DF's; LIAE is refused
            config, checkpoint = resolve(flags)
        train(config, resume=checkpoint, task_factory=task_factory(run))
    except TorchSAEError as exc:
        raise click.ClickException(name_flags(str(exc))) from exc


def _archi_given(flags: dict, config_file: str | None) -> bool:
    """Whether the flags or the --config file set the archi (else a fresh modular run uses df)."""
    from torchsae.train.runconfig import _raw_file_overrides

    if "archi" in flags.get("model", {}):
        return True
    return config_file is not None and "archi" in (_raw_file_overrides(Path(config_file)).get("model") or {})


@click.command("train", context_settings=_CTX)
@_identity_options
@train_options
def bank_train_cmd(bank_dir, identity, config_file, resume, model_size, **options) -> None:
    """Train one identity's autoencoder (its own latent space) and write its encoder and decoder."""

    run = _modular_run("identity", bank_dir, identity)
    _run_training(run, options, config_file, resume, model_size)


@click.command("distill", context_settings=_CTX)
@_identity_options
@click.option("--teacher", required=True, help="The bank identity whose frozen encoder is the teacher.")
@click.option(
    "--distill-weight",
    type=float,
    default=1.0,
    show_default=True,
    help="Weight of 10·MSE(student code, teacher code) beside the reconstruction loss.",
)
@train_options
def bank_distill_cmd(
    bank_dir, identity, teacher, distill_weight, config_file, resume, model_size, **options
) -> None:
    """Train an identity's autoencoder pulled toward a teacher's latent (parts written in its space)."""
    run = _modular_run("distill", bank_dir, identity, teacher=teacher, distill_weight=distill_weight)
    _run_training(run, options, config_file, resume, model_size)


@click.command("adapt", context_settings=_CTX)
@_identity_options
@click.option("--into", required=True, help="The bank identity whose latent space the adapter maps into.")
@click.option("--adapter-hidden", type=int, default=None, help="Hidden channels (default: the code's).")
@train_options
def bank_adapt_cmd(
    bank_dir, identity, into, adapter_hidden, config_file, resume, model_size, **options
) -> None:
    """Train an adapter from IDENTITY's frozen encoder into INTO's space (no existing part changes)."""
    from torchsae.modular.bank import ModuleBank

    run = _modular_run("adapter", bank_dir, identity, into=into, adapter_hidden=adapter_hidden)
    try:
        model_cfg = ModuleBank(bank_dir).model_config("encoder", identity)
    except TorchSAEError as exc:
        raise click.ClickException(str(exc)) from exc
    _run_training(run, options, config_file, resume, model_size, model_from_bank=model_cfg)


def _modular_run(mode: str, bank_dir: str, identity: str, **links):
    from torchsae.modular.tasks import ModularRun

    try:
        return ModularRun(mode, str(bank_dir), identity, **links)
    except TorchSAEError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("list", context_settings=_CTX)
@_bank_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def bank_list_cmd(bank_dir: str, as_json: bool) -> None:
    """The bank's parts: identity, kind, latent id, steps."""
    from torchsae.modular.bank import ModuleBank

    parts = ModuleBank(bank_dir).list()
    if as_json:
        click.echo(json.dumps({"bank": str(bank_dir), "parts": [p.to_dict() for p in parts]}, indent=2))
        return
    if not parts:
        click.echo(f"{bank_dir}: no parts")
        return
    for p in parts:
        extra = " ".join(f"{k}={p.meta[k]}" for k in ("teacher", "into") if p.meta.get(k))
        click.echo(
            f"{p.identity:<16} {p.kind:<8} {p.latent.id:<36} steps={p.meta.get('steps', '?')} {extra}".rstrip()
        )


@click.command("compose", context_settings=_CTX)
@_bank_option
@click.option("--encoder", required=True, help="Identity X whose encoder reads the faces.")
@click.option("--decoder", required=True, help="Identity Y whose decoder renders them.")
@click.option("--adapter", default=None, help="Identity whose adapter goes between (ONNX outputs only).")
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="A .pth checkpoint (torchsae export / swap / train --resume read it), or .onnx / .dfm.",
)
def bank_compose_cmd(bank_dir: str, encoder: str, decoder: str, adapter: str | None, output: str) -> None:
    """Combine Encoder_X [+ Adapter] + Decoder_Y (latents checked) into one model converting X to Y."""
    from torchsae.modular.bank import ModuleBank

    suffix = Path(output).suffix.lower()
    if suffix not in COMPOSE_WRITERS:
        raise click.ClickException(f"{output}: the output must end in {', '.join(COMPOSE_WRITERS)}")
    module_name, attr = COMPOSE_WRITERS[suffix].split(":")
    try:
        writer = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise click.ClickException(
            f"{output}: composing to {suffix} is not available in this build"
        ) from None
    written = writer(ModuleBank(bank_dir), encoder, decoder, output, adapter=adapter)
    click.echo(
        f"Composed {encoder}'s encoder{f' + {adapter} adapter' if adapter else ''} + {decoder}'s decoder -> {written}"
    )
