"""``torchsae import-dfl`` (a DeepFaceLab SAEHD model folder -> a TorchSAE checkpoint to resume) and
``torchsae export-dfl`` (the way back).

Why a command of its own: years of DeepFaceLab training live in model folders; one command turns a
folder into ``models/imported.pth``, and ``torchsae train --resume models/imported.pth`` continues at
the same iteration with the same options, weights and optimizer moments. ``export-dfl`` writes a
checkpoint back as a model folder, so a model trained in TorchSAE can be merged, exported or trained
on in DeepFaceLab.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from torchsae.errors import TorchSAEError


def _interactive() -> bool:
    """Whether a person can answer a prompt (both ends a terminal; never in scripts or CI)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _ask_model(folder: Path) -> str | None:
    """In an interactive terminal, ask which model to import when the folder holds several."""
    from torchsae.dfl.model_options import find_models

    names = find_models(folder)
    if len(names) < 2 or not _interactive():
        return None  # import_dfl_model picks the only one, or reports the choice
    return click.prompt("Several SAEHD models in this folder; import which", type=click.Choice(names))


@click.command("import-dfl")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model-name", default=None, help="Model to import: NAME of NAME_SAEHD_data.dat.")
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint to write, e.g. models/imported.pth.",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def import_dfl_cmd(folder: Path, model_name: str | None, output: Path, force: bool) -> None:
    """Import a DeepFaceLab SAEHD model folder as a TorchSAE checkpoint at the same iteration.

    \b
    DeepFaceLab's src is TorchSAE's B (the identity rendered in); dst is A (the faces to replace):
    decoder_src -> decoder B, decoder_dst -> decoder A, random_src_flip -> random_flip_b.
    Then:  torchsae train --resume OUTPUT --data-dir-a <dst faces> --data-dir-b <src faces>
    """
    from torchsae.convert.dfl_import import import_dfl_model

    try:
        if output.exists() and not force:
            raise TorchSAEError(f"{output}: already exists; pass --force to replace it")
        if model_name is None:
            model_name = _ask_model(folder)
        result = import_dfl_model(folder, output, model_name)
    except TorchSAEError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_messages(result.warnings, result.notes)
    cfg = result.config
    click.echo(
        f"wrote {result.output}: {result.model_name} {cfg.model.archi} {cfg.model.resolution}px "
        f"{cfg.model.face_type}, step {result.step}, optimizer {cfg.optim.optimizer}"
    )
    click.echo(f"networks: {', '.join(result.networks)}")
    click.echo(
        f"optimizer moments: {', '.join(result.optimizers) if result.optimizers else 'none (start from zero)'}"
    )
    click.echo(
        f"continue with: torchsae train --resume {result.output} --data-dir-a DST_FACES --data-dir-b SRC_FACES"
    )


def _echo_messages(warnings: list[str], notes: list[str]) -> None:
    """A conversion's warnings (something changed or was dropped) and notes (for information), on stderr."""
    for line in warnings:
        click.echo(f"Warning: {line}", err=True)
    for line in notes:
        click.echo(f"Note: {line}", err=True)


@click.command("export-dfl")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TorchSAE checkpoint (models/last.pth).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="DeepFaceLab model folder to write into, e.g. workspace/model.",
)
@click.option(
    "--model-name",
    default=None,
    help="NAME of NAME_SAEHD_*.npy (default: the name it was imported under, else 'torchsae').",
)
@click.option("--force", is_flag=True, help="Replace this model's files if they exist in OUTPUT.")
def export_dfl_cmd(checkpoint: Path, output: Path, model_name: str | None, force: bool) -> None:
    """Write a TorchSAE checkpoint as a DeepFaceLab SAEHD model folder, to merge, export or keep
    training in DeepFaceLab at the same iteration.

    \b
    Writes NAME_SAEHD_{encoder,inter,decoder_src,decoder_dst}.npy (LIAE: encoder, inter_AB, inter_B,
    decoder), NAME_SAEHD_src_dst_opt.npy (optimizer moments), NAME_SAEHD_data.dat (options,
    iteration, loss history) and NAME_SAEHD_summary.txt; B is DeepFaceLab's src, A its dst.
    """
    from torchsae.convert.dfl_export import export_dfl_model

    try:
        result = export_dfl_model(checkpoint, output, model_name, force=force)
    except TorchSAEError as exc:
        raise click.ClickException(str(exc)) from exc
    _echo_messages(result.warnings, result.notes)
    cfg = result.config
    click.echo(
        f"wrote DeepFaceLab model {result.model_name!r} in {result.folder}: {cfg.model.archi} "
        f"{cfg.model.resolution}px {cfg.model.face_type}, iteration {result.step}, optimizer {cfg.optim.optimizer}"
    )
    click.echo(f"networks: {', '.join(result.networks)}; optimizer moments: {', '.join(result.optimizers)}")
    click.echo(f"in DeepFaceLab: choose model '{result.model_name}' (SAEHD) in {result.folder}")
