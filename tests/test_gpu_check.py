"""``benchmarks/gpu_check.py`` (issue 18) on the CPU: the dry run of every stage, stage isolation, the time
budget and the PASS/MISS verdicts.

The GPU figures themselves cannot be checked here; what is checked is that every stage runs at toy
size through the same code the GPU run uses, that one stage's exception, hang or missing package is
recorded without stopping the others, and that the report says what the targets ask.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_module()


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _check_complete_dry_run(out: Path) -> dict:
    results = _results(out)
    statuses = {name: results["stages"][name]["status"] for name in gpu_check.STAGE_NAMES}
    assert statuses == {name: "ok" for name in gpu_check.STAGE_NAMES}
    rows = results["rows"]
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_check.FIELDS)  # a device's $OUT takes 8

    bench = rows["train_bench"]
    assert all(r["status"] == "ok" for r in bench)
    assert {r["amp"] for r in bench} == {"bfloat16", "float16", "none"}
    assert {r["channels_last_requested"] for r in bench} == {True, False}
    peak = rows["peak"][0]["flops"]
    for r in bench:  # MFU against the peak measured by the peak stage of the same run
        assert r["mfu_vs_bf16_peak"] == pytest.approx(r["flops_per_step"] / (r["ms_per_step"] / 1000) / peak)
    assert rows["train_compile"][0]["compile"] is True

    assert len(rows["memory_predict"]) == len(gpu_check.Plan.toy().memory_configs)
    assert all(r["predicted_bytes"] > 0 for r in rows["memory_predict"])
    assert [r["fits"] for r in rows["memory_8gib"]] == [True, True]
    assert all(r["plan"].startswith("Memory plan:") for r in rows["memory_8gib"])

    data = {r["what"]: r for r in rows["data"]}
    for what in ("end_to_end", "augmentation_only", "host_loader_only"):
        assert data[what]["status"] == "ok" and data[what]["samples_per_s"] > 0, what
    if importlib.util.find_spec("torchvision") is not None:  # optional: the nvJPEG row's decoder
        assert data["decode_jpeg_cpu"]["status"] == "ok" and data["decode_jpeg_cpu"]["samples_per_s"] > 0
    else:
        assert data["nvjpeg_decode"]["status"] == "skipped: torchvision is not installed"
    assert data["dali"]["status"].startswith("skipped")

    plan = gpu_check.Plan.toy()
    runs = {r["run"]: r for stage in ("train_bf16", "train_fp32", "train_fp16") for r in rows[stage]}
    for name, run in runs.items():
        assert run["status"] == "ok" and run["weights_finite"], name
        assert 0.0 <= run["data_wait_share"] <= 1.0
        assert run["loss_curve"] and run["steps"] == run["max_steps"]
    fp16 = runs["fp16"]
    assert fp16["skipped_steps"] >= len(plan.nan_steps) and fp16["guard_ok"]
    assert fp16["scaler_scale"] < gpu_check.SCALER_INIT  # the injected NaN steps backed the scale off

    export = rows["export"][0]
    assert export["status"] == "ok" and export["checkpoint_of"] == "train_bf16"
    assert export["max_diff"] <= export["tolerance"] == 1e-4
    assert export["device_max_diff"] <= 1e-4

    targets = {t["target"]: t["verdict"] for t in results["targets"]}
    assert len(targets) == 7
    assert all(v.startswith("dry run: ") or v == "not measured" for v in targets.values())
    markdown = (out / "results.md").read_text()
    assert "DRY RUN" in markdown and "None of these figures measures a GPU" in markdown
    return results


def test_dry_run_runs_every_stage(tmp_path: Path) -> None:
    """Every stage at toy size, in one process (the stage workers are the GPU run's own functions)."""
    out = tmp_path / "out"
    done = _run(["--dry-run", "--in-process", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check_complete_dry_run(out)


@pytest.mark.slow
def test_dry_run_in_stage_processes(tmp_path: Path) -> None:
    """The same dry run as the GPU machine runs it: one process per stage."""
    out = tmp_path / "out"
    done = _run(["--dry-run", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check_complete_dry_run(out)


def test_failure_hang_and_budget_are_recorded(tmp_path: Path) -> None:
    """A stage that raises, one that hangs (killed at its share of the budget) and one left no time.

    Budget 14 s with the stages' minimum/cap scaled by 0.25: peak fails at once, memory_predict hangs
    until the budget minus export's reserved minimum, export then finds less than its minimum left.
    """
    out = tmp_path / "out"
    args = ["--dry-run", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    args += [
        "--stages",
        "peak,memory_predict,export",
        "--fail-stage",
        "peak",
        "--hang-stage",
        "memory_predict",
    ]
    done = _run([*args, "--time-scale", "0.25", "--budget", "14"], timeout=120)
    assert done.returncode == gpu_check.EXIT_STAGE_PROBLEM, done.stderr[-3000:]
    stages = _results(out)["stages"]
    assert stages["peak"]["status"] == "error"
    assert "simulated failure" in stages["peak"]["detail"] and "Traceback" in stages["peak"]["traceback"]
    assert stages["memory_predict"]["status"] == "timeout"
    assert stages["export"]["status"] == "skipped: time"
    assert set(stages) == {"peak", "memory_predict", "export"}
    markdown = (out / "results.md").read_text()
    assert "| memory_predict | timeout |" in markdown and "| export | skipped: time |" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_without_gpu_and_without_dry_run_nothing_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run(["--out", str(out), "--stages", "peak"], timeout=120)
    assert done.returncode == gpu_check.EXIT_NO_GPU
    assert _results(out)["stages"]["peak"]["status"].startswith("skipped: no CUDA GPU")


def test_missing_package_names_the_stages_that_need_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        gpu_check.importlib.util, "find_spec", lambda name: None if name == "simplejpeg" else real(name)
    )
    found, missing = gpu_check.package_report(gpu_check.STAGES)
    assert found["simplejpeg"] is None and found["torch"]
    for stage in ("faceset", "memory_8gib", "data", "train_bf16", "export"):
        assert stage in missing["simplejpeg"]
    assert "train_bench" not in missing["simplejpeg"]


def test_plan_fits_the_device_budget() -> None:
    """The default plan's estimates fit 8 minutes; compile alone runs on what is left."""
    required = [s for s in gpu_check.STAGES if not s.optional]
    assert sum(s.estimate for s in required) <= 480 - 45
    assert [s.name for s in gpu_check.STAGES if s.optional] == ["train_compile"]
    assert all(s.minimum <= s.estimate <= s.cap for s in gpu_check.STAGES)
    full = gpu_check.Plan.full()
    assert full.bench_batches == (8, 32) and full.bench_model == {"archi": "df-ud", "resolution": 256}
    assert [batch for _, _, batch in full.budget_runs] == [8, 4]
    assert len(full.memory_configs) == 5 and full.train_steps == 300


def _record(stage: str, **row) -> dict:
    return {"kind": "row", "stage": stage, "status": "ok", **row}


def test_verdicts_against_the_targets() -> None:
    bench = {"target_model": True, "amp": "bfloat16", "batch_size": 32, "compile": False}
    curve_fp32 = [[step, 1.0] for step in range(10, 301, 10)]
    curve_bf16 = [[step, 1.0 + (0.08 if step > 200 else 0.0)] for step in range(10, 301, 10)]
    records = [
        {"kind": "meta", "dry_run": False},
        _record("train_bench", mfu_vs_bf16_peak=0.40, **bench),
        _record("train_compile", mfu_vs_bf16_peak=0.47, **{**bench, "compile": True}),
        _record("train_bench", mfu_vs_bf16_peak=0.9, **{**bench, "target_model": False}),  # a preset row
        _record("data", what="end_to_end", samples_per_s=12_000.0),
        _record("memory_predict", config="a", relative_error=0.10),
        _record("memory_predict", config="b", relative_error=-0.16),
        _record("memory_8gib", run="256", fits=True),
        {"kind": "row", "stage": "memory_8gib", "status": "oom", "run": "384", "fits": False},
        _record("train_bf16", run="bf16", loss_curve=curve_bf16, compare_last=100),
        _record("train_fp32", run="fp32", loss_curve=curve_fp32, compare_last=100),
        _record(
            "train_fp16", run="fp16", guard_ok=True, skipped_steps=2, nan_steps=[40, 80], scaler_scale=16384.0
        ),
        _record("export", max_diff=2e-5, tolerance=1e-4),
    ]
    results = gpu_check.collect(records)
    verdicts = [t["verdict"] for t in gpu_check.evaluate_targets(results)]
    # MFU: the best target row (compiled, 47 %) counts, not the preset row; memory: -16 % is outside
    # ±15 %; 8 GiB: one plan ran out of memory; bf16 vs fp32: +8 % over the last 100 steps > 5 %
    assert verdicts == ["PASS", "PASS", "MISS", "MISS", "MISS", "PASS", "PASS"]
    band = gpu_check.loss_band(results)
    assert band["relative"] == pytest.approx(0.08)
    markdown = gpu_check.render_markdown({**results, "targets": gpu_check.evaluate_targets(results)})
    assert "| bf16 MFU, df-ud 256 DFL default dims ≥ 45 % | 47.0% (batch 32, compiled) | PASS |" in markdown

    empty = gpu_check.collect([{"kind": "meta", "dry_run": False}])
    assert {t["verdict"] for t in gpu_check.evaluate_targets(empty)} == {"not measured"}


def test_timed_stream_measures_the_wait_and_injects_nan() -> None:
    batches = iter([{"warped_a": torch.ones(1, 3, 2, 2)} for _ in range(4)])
    stream = gpu_check.TimedStream(batches, nan_steps=(2,))
    got = [next(stream) for _ in range(4)]
    assert [bool(torch.isnan(b["warped_a"]).all()) for b in got] == [False, False, True, False]
    steady = stream.steady(0)
    assert steady["timed_steps"] == 3 and 0.0 <= steady["data_wait_share"] <= 1.0


def test_stage_skipped_for_a_missing_package_or_a_failed_faceset(tmp_path: Path) -> None:
    """Neither skip starts a process: the orchestrator decides from the package check and the records."""
    args = gpu_check.parse_args(
        ["--dry-run", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w")]
    )
    orchestrator = gpu_check.Orchestrator(args, [])
    orchestrator.out.mkdir(parents=True)
    stages = {stage.name: stage for stage in gpu_check.STAGES}
    with open(orchestrator.out / "log.txt", "ab") as log:
        missing = {"simplejpeg": "libjpeg-turbo decode"}
        assert not orchestrator.run_stage(stages["train_bf16"], [], missing, {}, log)
        orchestrator.record_stage("faceset", status="error", detail="boom")
        assert not orchestrator.run_stage(stages["data"], [], {}, {}, log)
    got = gpu_check.collect(gpu_check.read_records(orchestrator.out))["stages"]
    assert got["train_bf16"]["status"] == "skipped: missing simplejpeg (carry its wheel: --wheels DIR)"
    assert got["data"]["status"] == "skipped: faceset did not finish"
