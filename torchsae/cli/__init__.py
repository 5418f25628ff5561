"""The ``torchsae`` command line: one click group whose subcommands load lazily.

Why lazy: ``torchsae inspect`` on a faceset should not pay for importing torch, and a missing optional
dependency of one command (DALI, TensorRT) must not break the others. Each command lives in the
module of this package named in ``COMMANDS``; errors derived from :class:`TorchSAEError` print as one
line, never as a traceback.
"""

from __future__ import annotations

import importlib

import click

from torchsae.errors import TorchSAEError

# command name -> "module:attribute" (a click.Command or click.Group)
COMMANDS: dict[str, str] = {
    "info": "torchsae.cli.info:info",
    "export": "torchsae.cli.export:export_cmd",
    "build-engine": "torchsae.cli.export:build_engine_cmd",
    "train": "torchsae.cli.train:train_cmd",
    "demo": "torchsae.cli.demo:demo_cmd",
    "index": "torchsae.cli.data:index_cmd",
    "bench": "torchsae.cli.bench:bench",
    "inspect": "torchsae.cli.faceset:inspect_cmd",
    "xseg": "torchsae.cli.faceset:xseg_group",
    "import-dfl": "torchsae.cli.import_dfl:import_dfl_cmd",
    "export-dfl": "torchsae.cli.import_dfl:export_dfl_cmd",
    "swap": "torchsae.cli.swap:swap_cmd",
    "merge": "torchsae.cli.swap:merge_cmd",
    "bank": "torchsae.cli.bank:bank_group",
    "train-joint": "torchsae.cli.train_joint:train_joint_cmd",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs.

    ``lazy_commands`` maps a subcommand name to ``"module:attribute"`` (default: ``COMMANDS``).
    """

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = COMMANDS if lazy_commands is None else lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module_name, attr = self.lazy_commands[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TorchSAEError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="torchsae")
def main() -> None:
    """TorchSAE: DeepFaceLab's SAEHD face swap in PyTorch.

    A = DeepFaceLab's dst (the faces to replace); B = src (the identity rendered in).
    """
