"""TrainLogger: throughput arithmetic, TensorBoard scalars and images, wandb in offline mode, rank gating."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from torchsae.train.logging import TrainLogger, memory_mb


def _logger(tmp_path: Path, **kwargs) -> TrainLogger:
    return TrainLogger(tmp_path / "logs", start_step=10, max_steps=100, samples_per_step=8, **kwargs)


def test_throughput_counts_steps_and_samples_since_the_last_call(tmp_path: Path, monkeypatch) -> None:
    logger = _logger(tmp_path, enabled=False)
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    logger._last_time = 1000.0
    now[0] = 1002.0
    assert logger.throughput(20) == pytest.approx((5.0, 40.0))  # 10 steps in 2 s, 8 samples each
    now[0] = 1006.0
    assert logger.throughput(22) == pytest.approx((0.5, 4.0))  # the window restarted at step 20


def test_scalars_and_images_reach_tensorboard(tmp_path: Path) -> None:
    logger = _logger(tmp_path, enabled=True)
    logger.scalars(12, {"loss/a": 0.75, "loss/b": 0.5, "perf/samples_per_s": 3.0})
    image = np.zeros((16, 24, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    logger.image(12, "preview", image)
    logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs" / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss/a")] == [(12, 0.75)]
    stored = acc.Images("preview")[0]
    decoded = cv2.imdecode(np.frombuffer(stored.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (16, 24, 3) and (decoded[..., 0] == 255).all()  # BGR -> RGB -> BGR again


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    logger = _logger(tmp_path, enabled=False)
    logger.scalars(12, {"loss/a": 1.0})
    logger.image(12, "preview", np.zeros((4, 4, 3), np.uint8))
    logger.message("hidden")
    logger.close()
    assert not (tmp_path / "logs").exists()


def test_wandb_offline_run_records_scalars_and_previews(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = _logger(tmp_path, enabled=True, use_wandb=True, config={"train": {"batch_size": 2}})
    logger.scalars(11, {"loss/a": 0.25})
    logger.image(11, "preview", np.full((8, 8, 3), 128, np.uint8))
    logger.close()
    runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("*.wandb"))
    deadline = time.monotonic() + 20  # wandb's service process writes the record file asynchronously
    while b"loss/a" not in records.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"loss/a" in records.read_bytes()
    assert list((runs[0] / "files" / "media" / "images").glob("preview_11_*.png"))


def test_memory_is_reported_in_mib() -> None:
    value = memory_mb(torch.device("cpu"))
    assert 10 < value < 1_000_000  # a Python process with torch loaded holds tens of MiB at least
