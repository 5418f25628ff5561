"""``torchsae.process.pid_alive``: the liveness probe behind the run lock and the data-worker lifeline."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from torchsae.process import pid_alive


def test_this_process_is_alive() -> None:
    assert pid_alive(os.getpid())


def test_a_reaped_child_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


@pytest.mark.skipif(sys.platform != "linux", reason="zombies are read from /proc")
def test_a_zombie_counts_as_dead() -> None:
    """A child that exited but was not reaped still answers signal 0; a trainer in that state is gone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.kill(child.pid, 0)  # the zombie still exists as a process-table entry
        assert not pid_alive(child.pid)
    finally:
        child.wait()
