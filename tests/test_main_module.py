"""``python -m torchsae`` is the ``torchsae`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "torchsae", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_python_m_torchsae_lists_the_commands() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: torchsae ")
    for command in ("train", "export", "index", "demo", "import-dfl"):
        assert command in result.stdout


def test_python_m_torchsae_runs_a_command_and_its_exit_code() -> None:
    result = _run("info", "model", "--model-size", "128")
    assert result.returncode == 0, result.stderr
    assert "82,376,555" in result.stdout  # the 128 preset's parameter count (README table)
    assert _run("no-such-command").returncode == 2  # click's usage error, passed through
