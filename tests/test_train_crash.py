"""Crash safety: SIGTERM/SIGINT stop cleanly, and kill -9 at any moment never costs a loadable checkpoint."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train_support import make_faceset, subprocess_env, tiny_config, train_command

from torchsae.train import checkpoint as ck
from torchsae.train.trainer import state_digest, train

# POSIX signals sent to a child process (Windows has no SIGINT delivery to a child, nor kill -9)
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals to a child process")


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_faceset(tmp_path_factory.mktemp("faces"))


def _start(faceset, run: Path, *extra: str) -> subprocess.Popen:
    cmd = train_command(faceset, run, *extra)
    return subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_training(proc: subprocess.Popen) -> None:
    """Block until the process announces its run (the stop handlers are installed before that)."""
    for line in proc.stdout:
        if line.startswith("Training "):
            return
    raise AssertionError(f"training never started: {proc.stderr.read()[-2000:]}")


def test_sigterm_finishes_the_step_saves_and_exits_0(tmp_path: Path, faceset) -> None:
    proc = _start(faceset, tmp_path, "--max-steps", "100000", "--save-interval", "100000")
    _wait_for_training(proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM received: finishing this step and saving" in err
    state = ck.load_checkpoint(tmp_path / "models" / "last.pth")
    assert 0 < state["step"] < 100000
    assert f"Stopped by SIGTERM at step {state['step']}; saved" in err


def test_a_second_sigint_exits_at_once(tmp_path: Path, faceset) -> None:
    proc = _start(faceset, tmp_path, "--max-steps", "100000", "--save-interval", "100000")
    _wait_for_training(proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Interrupted: stopped without saving." in err
    assert not list((tmp_path / "models").glob(".*.tmp"))  # an interrupted save leaves no temp file


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kills", [2, pytest.param(6, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_always_leaves_a_loadable_checkpoint(
    tmp_path: Path, faceset, kills: int
) -> None:
    """save_interval 1: most of the time is spent saving, so the kills land inside saves too."""
    steps = 10
    run = tmp_path / "run"
    rng = random.Random(1234 + kills)
    args = ("--max-steps", str(steps), "--save-interval", "1", "--keep", "2", "--log-interval", "2")
    seen_steps = []
    for _ in range(kills):
        proc = _start(faceset, run, *args)
        _wait_for_training(proc)
        time.sleep(rng.uniform(0.2, 2.0))
        proc.kill()
        proc.communicate()
        last = run / "models" / "last.pth"
        if last.exists():
            seen_steps.append(ck.load_checkpoint(last)["step"])  # must always load
    proc = _start(faceset, run, *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    final = ck.load_checkpoint(run / "models" / "last.pth")
    assert final["step"] == steps
    assert seen_steps == sorted(seen_steps)
    assert not list((run / "models").glob(".*.tmp"))  # leftovers of killed saves are cleaned up
    # every step was checkpointed with its RNG and data state, so the crashes cost nothing:
    # the result is bit-identical to an uninterrupted run
    straight = train(tiny_config(tmp_path / "straight", faceset, steps))
    assert straight.step == steps
    reference = ck.load_checkpoint(tmp_path / "straight" / "models" / "last.pth")
    assert state_digest(final["model"]) == state_digest(reference["model"])
