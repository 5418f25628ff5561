"""Two CPU ranks under torchrun (gloo): identical weights, disjoint samples, rank-0-only files, restarts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_support import REPO, TINY_FLAGS, make_faceset, subprocess_env

from torchsae.train import checkpoint as ck
from torchsae.train.dist import DistInfo, gather_to_main, init_distributed, resolve_device
from torchsae.train.trainer import state_digest


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_faceset(tmp_path_factory.mktemp("faces"), count=8)


def _torchrun(faceset, run_dir: Path, *extra: str, hooks: list[str], restarts: int = 0):
    """torchrun with the tests' entry point: ``hooks`` are its own options (probe, injected failure)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [f"--max-restarts={restarts}", str(REPO / "tests" / "helpers_train_hooks.py"), *hooks, "--"]
    cmd += ["--data-dir-a", str(faceset[0]), "--data-dir-b", str(faceset[1]), "--run-dir", str(run_dir)]
    cmd += [*TINY_FLAGS, *extra]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=REPO)


def _probes(folder: Path) -> dict[int, dict]:
    return {r: json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)}


def test_single_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(0, 0, 1, torch.device("cpu"), None)
    assert info.is_main and not info.distributed
    assert gather_to_main(info, {"x": 1}) == {0: {"x": 1}}
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(Exception, match="CUDA is not available"):
            resolve_device("cuda")


def test_two_ranks_train_identical_weights_on_different_samples(tmp_path: Path, faceset) -> None:
    probe = tmp_path / "probe"
    run = tmp_path / "run"
    proc = _torchrun(
        faceset,
        run,
        *("--max-steps", "4", "--save-interval", "2", "--preview-interval", "4"),
        hooks=["--probe-dir", str(probe)],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x2: batch 2 per rank per side, global batch 4 per side" in proc.stdout
    probes = _probes(probe)
    state = ck.load_checkpoint(run / "models" / "last.pth")
    # every rank ends with the weights rank 0 saved
    assert probes[0]["digest"] == probes[1]["digest"] == state_digest(state["model"])
    # each rank drew its own samples: within an epoch the two shards are disjoint
    for step in range(4):
        assert set(probes[0]["index_a"][step]).isdisjoint(probes[1]["index_a"][step])
    # per-rank states in the one checkpoint, written by rank 0 only
    assert set(state["rng"]) == {0, 1} and set(state["data"]) == {0, 1}
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert sorted(p.name for p in (run / "logs" / "previews").iterdir()) == ["step_00000004.png"]
    assert sorted(p.name for p in (run / "models").iterdir()) == [
        "config.yaml",
        "last.pth",
        "step_00000002.pth",
        "step_00000004.pth",
    ]


def test_a_rank_that_fails_once_is_restarted_and_the_run_finishes(tmp_path: Path, faceset) -> None:
    probe, marker = tmp_path / "probe", tmp_path / "failed_once"
    hooks = [
        "--probe-dir",
        str(probe),
        "--fail-at-step",
        "3",
        "--fail-rank",
        "1",
        "--fail-marker",
        str(marker),
    ]
    run = tmp_path / "run"
    proc = _torchrun(faceset, run, "--max-steps", "5", "--save-interval", "2", hooks=hooks, restarts=1)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "simulated failure at step 3 on rank 1" in marker.read_text() + proc.stderr
    assert "Resuming from" in proc.stdout and "at step 2" in proc.stdout  # the automatic resume
    state = ck.load_checkpoint(run / "models" / "last.pth")
    assert state["step"] == 5
    probes = _probes(probe)
    assert probes[0]["digest"] == probes[1]["digest"] == state_digest(state["model"])
    assert len(probes[0]["index_a"]) == 3  # the restarted workers trained steps 2..4 only
