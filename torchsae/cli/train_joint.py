"""``torchsae train-joint``: shared encoder, N decoders (DeepFaceLab's DF for N identities).

\b
  torchsae train-joint --data-dir A=faces/A --data-dir B=faces/B --data-dir C=faces/C --run-dir runs/abc
  torchsae train-joint --bank BANK --data-dir A=faces/A --data-dir B=faces/B [train options]

One encoder and inter for every identity, one decoder per identity, trained jointly (each identity
reconstructs itself); X→Y = decoder_Y(inter(encoder(x))). With ``--bank`` the parts are also written
into the module bank after every checkpoint (every identity's encoder = the shared one, one latent
space ``joint-<ids>``), so ``torchsae bank compose --encoder X --decoder Y`` joins any pair. Takes
every ``torchsae train`` option; the style, GAN and true-face powers must stay 0. A resume (automatic
from RUN_DIR/models/last.pth) needs the same ``--data-dir`` list.
"""

from __future__ import annotations

from pathlib import Path

import click

from torchsae.cli.train import flags_to_overrides, name_flags, train_options
from torchsae.errors import TorchSAEError


def parse_identities(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``ID=FOLDER`` pairs, in the order given; at least two."""
    out = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise click.BadParameter(
                f"{value!r}: expected ID=FOLDER (e.g. A=faces/A)", param_hint="--data-dir"
            )
        out.append((name, folder))
    if len(out) < 2:
        raise click.BadParameter("give at least two identities (--data-dir ID=FOLDER, repeated)")
    return tuple(out)


@click.command("train-joint", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    "identities",
    multiple=True,
    required=True,
    metavar="ID=FOLDER",
    help="An identity's name and faceset; repeat once per identity (order = decoder order).",
)
@click.option(
    "--bank", "bank_dir", default=None, type=click.Path(file_okay=False), help="Also write the parts here."
)
@train_options
def train_joint_cmd(identities, bank_dir, config_file, resume, model_size, **options) -> None:
    """Train one shared encoder and one decoder per identity (DF for N identities)."""
    from torchsae.cli.bank import _archi_given
    from torchsae.train.joint_task import JointTaskFactory
    from torchsae.train.runconfig import resolve_run_config
    from torchsae.train.trainer import train

    pairs = parse_identities(identities)
    options.pop("data_dir_a", None), options.pop("data_dir_b", None)
    flags = flags_to_overrides(options)
    # the config's A and B name the first two faceset folders (summaries); the task reads every pair
    flags.setdefault("data", {}).update(data_dir_a=pairs[0][1], data_dir_b=pairs[1][1])
    if bank_dir is not None:
        flags.setdefault("train", {}).setdefault("run_dir", str(Path(bank_dir) / "runs" / "joint"))
    try:
        size = int(model_size) if model_size else None
        config, checkpoint = resolve_run_config(
            flags, config_file=config_file, model_size=size, resume=resume
        )
        if checkpoint is None and not _archi_given(flags, config_file):
            flags.setdefault("model", {})["archi"] = "df"  # a shared encoder, N decoders is DF's structure
            config, checkpoint = resolve_run_config(
                flags, config_file=config_file, model_size=size, resume=resume
            )
        if bank_dir is not None:
            from torchsae.modular.joint import joint_bank_task_factory

            factory = joint_bank_task_factory(pairs, str(bank_dir))
        else:
            factory = JointTaskFactory(pairs)
        train(config, resume=checkpoint, task_factory=factory)
    except TorchSAEError as exc:
        raise click.ClickException(name_flags(str(exc))) from exc
