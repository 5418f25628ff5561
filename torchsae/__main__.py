"""``python -m torchsae``: the ``torchsae`` command, for environments where the console script is not on
PATH (a venv that is not activated, Windows' per-user Scripts folder) and for ``torchrun -m torchsae``."""

from torchsae.cli import main

if __name__ == "__main__":
    main(prog_name="torchsae")
