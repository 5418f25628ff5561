"""Shared set-up for the trainer tests: a tiny demo faceset, a tiny config, subprocess commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from torchsae.config import Config, ModelConfig

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = {"archi": "liae-ud", "resolution": 32, "ae_dims": 16, "e_dims": 8, "d_dims": 8, "d_mask_dims": 4}
TINY_FLAGS = ["--archi", "liae-ud", "--resolution", "32", "--ae-dims", "16", "--e-dims", "8", "--d-dims", "8"]
TINY_FLAGS += [
    "--d-mask-dims",
    "4",
    "--batch-size",
    "2",
    "--workers",
    "0",
    "--backend",
    "torch",
    "--device",
    "cpu",
]


def make_faceset(root: Path, count: int = 8) -> tuple[Path, Path]:
    """A small synthetic A/B faceset (DeepFaceLab JPEGs with XSeg masks), no truth pairs."""
    from torchsae.demo import make_demo_faceset

    result = make_demo_faceset(root, count, seed=0, truth_count=0)
    return result.dirs


def tiny_config(run_dir: Path, faceset: tuple[Path, Path], steps: int, **train: object) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(**TINY_MODEL)
    cfg.data.data_dir_a, cfg.data.data_dir_b = str(faceset[0]), str(faceset[1])
    cfg.data.workers = 0
    cfg.data.backend = "torch"
    cfg.train.batch_size = 2
    cfg.train.max_steps = steps
    cfg.train.run_dir = str(run_dir)
    cfg.train.device = "cpu"
    cfg.train.log_interval = 2
    cfg.train.preview_interval = 1000
    cfg.train.save_interval = 1000
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg.validate()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a training subprocess: the source tree importable, one thread, no progress bar."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"OMP_NUM_THREADS": "1", "TORCHSAE_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def train_command(faceset: tuple[Path, Path], run_dir: Path, *extra: str) -> list[str]:
    """``python launch/train.py`` with the tiny model (the same options as ``torchsae train``)."""
    return [
        sys.executable,
        str(REPO / "launch" / "train.py"),
        "--data-dir-a",
        str(faceset[0]),
        "--data-dir-b",
        str(faceset[1]),
        "--run-dir",
        str(run_dir),
        *TINY_FLAGS,
        *extra,
    ]


def scale_loss_at(monkeypatch, calls_to_scale: set[int], factor: float) -> list[int]:
    """Multiply SAEHDLoss's loss by ``factor`` on the given (0-based) calls (``float("nan")``: a
    non-finite step; a large finite factor: a loss spike); returns the call counter."""
    from torchsae.losses import SAEHDLoss

    original = SAEHDLoss.forward
    calls = [0]

    def forward(self, out, batch, *args, **kwargs):
        loss, terms = original(self, out, batch, *args, **kwargs)
        index = calls[0]
        calls[0] += 1
        return (loss * factor if index in calls_to_scale else loss), terms

    monkeypatch.setattr(SAEHDLoss, "forward", forward)
    return calls
