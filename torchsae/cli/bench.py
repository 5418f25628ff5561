"""``torchsae bench``: the measurement commands, one subcommand per thing measured.

A group whose subcommands import lazily (``bench data`` needs cv2 and DALI, ``bench train`` needs the
model); other modules register theirs by adding a line to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import click

from torchsae.cli import LazyGroup

# subcommand name -> "module:attribute"
SUBCOMMANDS: dict[str, str] = {
    "data": "torchsae.cli.data:bench_data_cmd",
    "train": "torchsae.cli.bench_train:bench_train_cmd",
}


@click.group("bench", cls=LazyGroup, lazy_commands=SUBCOMMANDS)
def bench() -> None:
    """Throughput measurements (data pipeline, training step)."""
