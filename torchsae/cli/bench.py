"""``torchsae bench``: the measurement commands, one subcommand per thing measured.

A group whose subcommands import lazily (``bench data`` needs cv2 and DALI, ``bench train`` needs the
model); other modules register theirs by adding a line to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import importlib

import click

# subcommand name -> "module:attribute"
SUBCOMMANDS: dict[str, str] = {
    "data": "torchsae.cli.data:bench_data_cmd",
    "train": "torchsae.cli.bench_train:bench_train_cmd",
}


class _LazyBench(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            module_name, attr = SUBCOMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


@click.group("bench", cls=_LazyBench)
def bench() -> None:
    """Throughput measurements (data pipeline, training step)."""
