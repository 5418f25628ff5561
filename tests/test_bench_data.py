"""The data-throughput measurement: timing harness, JSON keys, the CLI, and the DeepFaceLab-style
baseline against hand-written references."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_dfl_reference import assert_mask_close
from test_loaders_support import make_faceset

from pipelines.bench import WARMUP_CALLS, measure, run_timed
from pipelines.index import build_index
from torchsae.cli import main
from torchsae.dfl.masks import eyes_mouth_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from data_throughput import resampling_floor  # noqa: E402
from dfl_baseline import dfl_sample, eyes_mouth_whole_image, load_record, warp_params  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
SAMPLEPROC = FIXTURES / "sampleproc_r128"
ENTRIES = json.loads((SAMPLEPROC / "manifest.json").read_text())["files"]

KEYS = ("decode_ceiling_per_core", "host_samples_per_s_per_core", "full_samples_per_s_per_core")


def test_run_timed_counts_only_timed_calls_and_uses_cpu_time() -> None:
    calls = []

    def busy() -> int:
        calls.append(1)
        end = time.process_time() + 0.01
        while time.process_time() < end:
            pass
        return 4

    result = run_timed(busy, seconds=0.05, min_calls=3)
    timed = len(calls) - WARMUP_CALLS
    assert result["samples"] == 4 * timed and timed >= 3
    assert math.isclose(result["per_cpu_s"], 400.0, rel_tol=0.25)  # 4 samples per 10 ms of CPU

    def idle() -> int:
        time.sleep(0.01)  # wall time passes, almost no CPU time: per-CPU rate is far above per-wall
        return 1

    slept = run_timed(idle, seconds=0.05)
    assert slept["per_cpu_s"] > 5 * slept["per_wall_s"]


def test_measure_reports_the_three_rates(tmp_path: Path) -> None:
    make_faceset(tmp_path, 8, size=128)
    result = measure(tmp_path, 64, "torch", seconds=0.05, batch_size=4)
    for key in KEYS:
        assert result[key] > 0
    # decode-only is the ceiling of the host path; augmentation only adds work
    assert result["host_samples_per_s_per_core"] < 1.5 * result["decode_ceiling_per_core"]
    assert result["full_samples_per_s_per_core"] < result["host_samples_per_s_per_core"]
    assert result["files"] == 8 and result["image_size"] == 128
    expected = 1000 / result["full_samples_per_s_per_core"] - 1000 / result["host_samples_per_s_per_core"]
    assert math.isclose(result["augment_ms_per_sample"], expected) and expected > 0


def test_cli_bench_data_json(tmp_path: Path) -> None:
    make_faceset(tmp_path, 6, size=128)
    args = [
        "bench",
        "data",
        "--data-dir",
        str(tmp_path),
        "-r",
        "64",
        "--seconds",
        "0.05",
        "--batch-size",
        "3",
    ]
    out = CliRunner().invoke(main, [*args, "--workers", "0", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert all(data[key] > 0 for key in KEYS) and data["backend"] == "torch"


def test_cli_index_summary(tmp_path: Path) -> None:
    make_faceset(tmp_path, 3, size=64)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    out = CliRunner().invoke(main, ["index", str(tmp_path), "-r", "32", "-q"])
    assert out.exit_code == 0, out.output
    assert "indexed 3 files, skipped 1 (see " in out.output and "broken.jpg" in out.output
    missing = CliRunner().invoke(main, ["index", str(tmp_path), "--mask-policy", "bogus"])
    assert missing.exit_code != 0


def test_baseline_sample_matches_opencv_reference_and_the_index(tmp_path: Path) -> None:
    paths = make_faceset(tmp_path, 3, size=128)
    index = build_index(tmp_path, 64, "xseg", workers=1, progress=False).index
    for row, path in enumerate(paths):
        sample = dfl_sample(str(path), 64, np.random.default_rng(0), augment=False)
        reference = cv2.resize(
            cv2.imread(str(path)).astype(np.float32) / 255, (64, 64), interpolation=cv2.INTER_CUBIC
        )
        np.testing.assert_allclose(sample["target"], reference, atol=1e-6)
        # the same DeepFaceLab masks as the index (which stores them as uint8)
        np.testing.assert_allclose(sample["mask"], index.masks[row, 0] / 255.0, atol=0.5 / 255 + 1e-6)
    augmented = dfl_sample(str(paths[0]), 64, np.random.default_rng(1))
    for key, channels in (("warped", 3), ("target", 3), ("mask", None), ("em", None)):
        value = augmented[key]
        assert value.shape == ((64, 64, channels) if channels else (64, 64)) and value.dtype == np.float32
        assert value.min() >= 0.0 and value.max() <= 1.0
    assert math.isclose(float(augmented["em"].max()), 1.0, abs_tol=1e-6)  # renormalised by its maximum


def test_baseline_warp_params_follow_the_spec() -> None:
    rng = np.random.default_rng(3)
    w = 128
    flips = 0
    for _ in range(300):
        params = warp_params(w, rng)
        affine = params["affine"]
        scale = math.sqrt(abs(np.linalg.det(affine[:, :2])))
        rotation = math.degrees(math.atan2(-affine[0, 1], affine[0, 0]))
        assert 1 / 1.15 - 1e-9 <= scale <= 1.15 + 1e-9 and -10 <= rotation <= 10
        # the translation beyond getRotationMatrix2D's centring term is within ±0.05·w
        centre = np.array([w // 2, w // 2])
        shift = affine[:, 2] - (centre - affine[:, :2] @ centre)
        assert np.all(np.abs(shift) <= 0.05 * w + 1e-9)
        identity = np.arange(w, dtype=np.float32)
        dx = params["map_x"] - identity[None, :]
        dy = params["map_y"] - identity[:, None]
        cell_bound = max(np.abs(dx).max(), np.abs(dy).max())
        assert cell_bound <= 0.24 * (w / 2) + 1.0  # at most 0.24 · cell, cell ≤ w/2
        flips += bool(params["flip"])
    assert 0.3 < flips / 300 < 0.5  # probability 0.4


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["file"])
def test_baseline_without_augmentation_equals_deepfacelab_sample_processor(entry: dict) -> None:
    """DeepFaceLab's own SampleProcessor outputs (warp and transform off) are what the baseline makes."""
    sample = dfl_sample(
        load_record(str(FIXTURES / entry["file"])), 128, np.random.default_rng(0), augment=False
    )
    for key, ref_key in (("mask", "full_face_mask"), ("em", "eyes_mouth_mask")):
        # masks: within a few float32 ulps (OpenCV's SIMD kernels differ between CPUs; see MASK_ATOL)
        reference = np.load(SAMPLEPROC / entry[ref_key]["npy"]).reshape(sample[key].shape)
        assert_mask_close(sample[key], reference, err_msg=key)
    # The image goes through the JPEG decoder, whose output differs by a level or two between
    # libjpeg builds (measured here: at most 0.0088, i.e. 2.3/255, after the cubic resize).
    error = np.abs(sample["target"] - np.load(SAMPLEPROC / entry["img_bgr"]["npy"]))
    assert error.max() < 3 / 255 and error.mean() < 0.2 / 255
    np.testing.assert_array_equal(sample["warped"], sample["target"])


@pytest.mark.parametrize("h", [512, 256, 100])
def test_whole_image_eyes_mouth_equals_the_windowed_form(h: int) -> None:
    """The baseline's plain whole-image computation and torchsae's windowed one agree bit for bit."""
    rng = np.random.default_rng(h)
    landmarks = rng.uniform(0.1 * h, 0.9 * h, size=(68, 2))
    whole = eyes_mouth_whole_image(landmarks, h, h)
    np.testing.assert_array_equal(whole, eyes_mouth_mask(landmarks, (h, h))[..., 0])
    assert whole.max() > 0.5


def test_resampling_floor_is_above_the_complete_path(tmp_path: Path) -> None:
    """The two bicubic resamplings alone are only part of the augmentation: cheaper than all of it."""
    paths = [str(p) for p in make_faceset(tmp_path, 4, size=128)]
    floor = resampling_floor(paths, 64, 4, seconds=0.05)
    full = measure(tmp_path, 64, "torch", seconds=0.05, batch_size=4)["full_samples_per_s_per_core"]
    assert floor > full > 0
