"""GPU validation in one command (issue 18): throughput, memory, data path, real training, export.

    python benchmarks/gpu_check.py --out DIR [--budget 480] [--wheels DIR] [--append-results]
    python benchmarks/gpu_check.py --out DIR --dry-run      # every stage at toy size on the CPU (tests)
    python benchmarks/gpu_check.py --list                   # the stage plan with its time estimates
    python benchmarks/gpu_check.py --report-only --out DIR --append-results   # fetched results -> RESULTS.md

Writes ``DIR/results.json`` and ``DIR/results.md`` (tables + a Targets table with a PASS/MISS column),
``DIR/rows.jsonl`` (every figure as it is measured) and ``DIR/log.txt`` (the stages' output). Both
result files are rewritten after every measured row, so a run cut short still leaves what it measured.
Nothing under DIR but those four files (a device's ``$OUT`` returns at most 8); checkpoints, facesets
and ONNX files go to ``--work-dir`` (default: a new folder under /tmp).

Robustness: each stage runs in its own Python process (its own CUDA context, memory-fraction setting
and time limit), so an exception, an out-of-memory error, a lost CUDA context or a hang in one stage is
recorded in the JSON and the next stage starts. ``--budget`` seconds (default 480 = 8 minutes, from
this script's start) bound the whole run: a stage starts only if its minimum time fits next to the
minimum times of the stages still to come, otherwise it is recorded as ``skipped: time``; a stage is
killed when its share of the budget is spent (``timeout``), and inside a stage each row checks the
clock first. SIGTERM (e.g. an outer ``timeout``) stops the running stage and writes the report.

Stages, in order, with their estimated seconds on one H200 (16 cores), process start included
(estimates from the CPU figures in benchmarks/RESULTS.md scaled to the H200's measured 790 TFLOP/s
bf16; not yet measured — the JSON records each stage's actual seconds next to its estimate):

=================  ====  ===========================================================================
stage              est.  what
=================  ====  ===========================================================================
peak                 15  bf16 matmul peak (8192³, best of 3), device facts
faceset              25  demo faceset (512 faces per side) and its side indexes at 256 and 384
train_bench         110  ``bench train`` eager: df-ud 256 DFL default dims, batch 8 and 32 per side,
                         fp32 / bf16 / fp16+scaler, channels_last on/off (12 rows), then the
                         ``--model-size 256`` and ``384`` presets at bf16 batch 8: ms/step, samples/s,
                         MFU against the measured bf16 peak, peak memory
memory_predict       35  memory planner's CPU prediction vs a GPU probe (max_memory_allocated), 5 configs
memory_8gib          55  ``--memory-budget 8GiB`` training (20 steps) of df-ud 256 batch 8 and df-ud 384
                         batch 4 under ``torch.cuda.set_per_process_memory_fraction`` = 8 GiB
data                 45  torch backend + CUDA augmentation end to end at 256; augmentation alone; host
                         loader alone; ``torchvision.io.decode_jpeg(device="cuda")`` batched (nvJPEG)
train_bf16           35  ``torchsae train --model-size 256`` 300 steps, bf16: steps/s, data-wait share
train_fp32           40  the same run in fp32 (TF32): bf16's loss curve must stay within the band
train_fp16           30  150 steps fp16 + GradScaler, NaN batches injected at two steps: scaler and
                         NaN guard at work
export               40  the bf16 run's CUDA-trained checkpoint -> ONNX, ONNX Runtime (CPU) parity
train_compile       rest ``bench train --compile`` df-ud 256 bf16 batch 32 and 8, with what time is left
=================  ====  ===========================================================================

The estimates total 430 s; ``train_compile`` runs last with the rest of the budget (it is killed at
the budget, never past it). Total device time is the budget plus the machine's start.

Targets (PASS/MISS column): ≥ 45 % bf16 MFU for df-ud 256 at DFL default dims; data path ≥ 10,000
samples/s at 256 with augmentation on the GPU (A and B faces counted); memory prediction within 15 %
of the measured peak; both 8 GiB plans train without running out of memory; bf16 loss within 5 % of
fp32 (mean over the last 100 of 300 steps, same seed and data); fp16 run completes with the injected
NaN steps skipped; ONNX Runtime matches PyTorch within the export's 1e-4.

Requirements on the GPU machine: a plain checkout and the machine's own torch (≥ 2.4). Packages are
checked up front and every stage that needs a missing one is skipped with the reason. ``simplejpeg``
(libjpeg-turbo decode) is needed by ``faceset``, ``memory_8gib``, ``data``, ``train_*`` and ``export``;
where it is missing, carry its wheel and pass ``--wheels DIR``: the script installs every ``*.whl`` in
DIR with ``pip install --no-index --no-deps --target WORK/site`` and puts that folder on the stages'
path. Fetch it where pip has a network, e.g. for Python 3.12 on x86-64::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl simplejpeg==1.9.0

``torchvision`` is needed only for the nvJPEG row, ``onnx``/``onnxruntime`` only for ``export``.
Exit status: 0 when every stage ran (whatever the PASS/MISS verdicts), 1 when a stage failed, timed out
or was skipped, 2 when there is no CUDA GPU and ``--dry-run`` was not given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _path in (str(REPO), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

FIELDS = ("results.json", "results.md", "rows.jsonl", "log.txt")
LOG_LIMIT = 8 * 2**20  # log.txt keeps its last 8 MiB
MFU_TARGET, DATA_TARGET, MEMORY_TOLERANCE, LOSS_BAND = 0.45, 10_000.0, 0.15, 0.05
BUDGET_BYTES = 8 * 2**30
SCALER_INIT = 2.0**16  # torch.amp.GradScaler's default init_scale, which the trainer keeps
EXIT_OK, EXIT_STAGE_PROBLEM, EXIT_NO_GPU = 0, 1, 2

# module -> what it is for; the stages name the modules they import
PACKAGES = {
    "torch": "everything",
    "numpy": "everything",
    "cv2": "faceset, previews, export faces (opencv-python-headless)",
    "simplejpeg": "libjpeg-turbo decode: side index and torch loader",
    "yaml": "the trainer's config.yaml (pyyaml)",
    "tqdm": "the trainer's progress",
    "tensorboard": "the trainer's logs",
    "torchvision": "nvJPEG decode row only",
    "onnx": "export",
    "onnxruntime": "export parity",
    "onnxscript": "export (torch.onnx)",
    "triton": "--compile rows on the GPU (inductor)",
}
TRAINER = ("numpy", "cv2", "simplejpeg", "yaml", "tqdm", "tensorboard")


# ---------------------------------------------------------------------------------------------------
# the plan: stage list and sizes (full on the GPU, toy on the CPU for --dry-run)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    estimate: float  # seconds on one H200, process start included
    minimum: float  # the stage is skipped unless this much time is left for it
    cap: float  # at most this much of the budget
    needs: tuple[str, ...] = ("torch", "numpy")
    optional: bool = False  # runs with whatever time is left; later stages reserve nothing for it
    after: tuple[str, ...] = ()  # stages that must have finished cleanly first (when they were selected)


FACES = ("faceset",)
STAGES: tuple[Stage, ...] = (
    Stage("peak", "bf16 matmul peak", 15, 8, 60),
    Stage("faceset", "demo faceset and side indexes", 25, 10, 90, TRAINER),
    Stage("train_bench", "bench train (eager)", 110, 40, 160),
    Stage("memory_predict", "memory planner: predicted vs measured", 35, 15, 70),
    Stage(
        "memory_8gib",
        "--memory-budget 8GiB under an 8 GiB memory fraction",
        55,
        25,
        100,
        TRAINER,
        after=FACES,
    ),
    Stage("data", "data path on the GPU machine", 45, 20, 80, TRAINER, after=FACES),
    Stage("train_bf16", "torchsae train, bf16", 35, 20, 90, TRAINER, after=FACES),
    Stage("train_fp32", "torchsae train, fp32", 40, 20, 90, TRAINER, after=FACES),
    Stage("train_fp16", "torchsae train, fp16 + scaler, NaN injected", 30, 15, 70, TRAINER, after=FACES),
    Stage(
        "export",
        "ONNX export and ONNX Runtime parity",
        40,
        15,
        90,
        (*TRAINER, "onnx", "onnxruntime"),
        after=FACES,
    ),
    Stage("train_compile", "bench train --compile", 90, 45, 300, optional=True),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)

TOY_DIMS = {"ae_dims": 32, "e_dims": 8, "d_dims": 8, "d_mask_dims": 4}


@dataclass(frozen=True)
class Plan:
    """Sizes of every stage. ``Plan.full()`` is the GPU run; ``Plan.toy()`` the CPU dry run."""

    dry: bool
    device: str
    peak_size: int | None
    peak_seconds: float
    faces: int
    index_resolutions: tuple[int, ...]
    bench_model: dict
    bench_batches: tuple[int, ...]
    bench_steps: int
    bench_warmup: int
    bench_row_seconds: float
    preset_rows: tuple[tuple[str, dict, int], ...]
    compile_batches: tuple[int, ...]
    compile_row_seconds: float
    memory_configs: tuple[tuple[str, dict, int, str, str], ...]
    budget_runs: tuple[tuple[str, dict, int], ...]
    budget_steps: int
    data_resolution: int
    data_batch: int
    data_seconds: float
    train_flags: dict
    train_model_size: int | None
    train_batch: int
    train_steps: int
    fp16_steps: int
    nan_steps: tuple[int, ...]
    log_interval: int
    steady_from: int
    compare_last: int
    workers: int  # loader workers per side (two sides: half the cores each)
    train_workers: int  # the same for the train_* runs (the dry run's one worker checks that path)

    @staticmethod
    def full() -> Plan:
        cores = os.cpu_count() or 2
        dfl = {"archi": "df-ud", "resolution": 256}  # DeepFaceLab's default dims (ae 256, e 64, d 64)
        return Plan(
            dry=False,
            device="cuda:0",
            peak_size=None,
            peak_seconds=0.5,
            faces=512,
            index_resolutions=(256, 384),
            bench_model=dfl,
            bench_batches=(8, 32),
            bench_steps=15,
            bench_warmup=3,
            bench_row_seconds=9,
            preset_rows=(("--model-size 256", {"size": 256}, 8), ("--model-size 384", {"size": 384}, 8)),
            compile_batches=(32, 8),
            compile_row_seconds=60,
            memory_configs=(
                ("df-ud 256 DFL dims, b8, fp32", dfl, 8, "none", "none"),
                ("df-ud 256 DFL dims, b8, bf16", dfl, 8, "bf16", "none"),
                ("df-ud 256 DFL dims, b32, bf16", dfl, 32, "bf16", "none"),
                ("--model-size 256 (liae-udt), b8, bf16", {"size": 256}, 8, "bf16", "none"),
                (
                    "df-ud 384 DFL dims, b8, bf16, recompute all",
                    {**dfl, "resolution": 384},
                    8,
                    "bf16",
                    "all",
                ),
            ),
            budget_runs=(
                ("df-ud 256 DFL dims, batch 8", dfl, 8),
                ("df-ud 384 DFL dims, batch 4", {**dfl, "resolution": 384}, 4),
            ),
            budget_steps=20,
            data_resolution=256,
            data_batch=32,
            data_seconds=6.0,
            train_flags={},
            train_model_size=256,
            train_batch=8,
            train_steps=300,
            fp16_steps=150,
            nan_steps=(40, 80),
            log_interval=10,
            steady_from=30,
            compare_last=100,
            workers=max(1, cores // 2),
            train_workers=max(1, cores // 2),
        )

    @staticmethod
    def toy() -> Plan:
        toy = {"archi": "df-ud", "resolution": 32, **TOY_DIMS}
        return Plan(
            dry=True,
            device="cpu",
            peak_size=128,
            peak_seconds=0.01,
            faces=6,
            index_resolutions=(32,),
            bench_model=toy,
            bench_batches=(2,),
            bench_steps=1,
            bench_warmup=0,
            bench_row_seconds=0.5,
            preset_rows=(("liae-ud toy (stands in for the presets)", {**toy, "archi": "liae-ud"}, 1),),
            compile_batches=(1,),
            compile_row_seconds=5,
            memory_configs=(
                ("toy b2 fp32", toy, 2, "none", "none"),
                ("toy b2 bf16", toy, 2, "bf16", "none"),
                ("toy b2 bf16 ckpt", toy, 2, "bf16", "all"),
            ),
            budget_runs=(("toy batch 2", toy, 2), ("toy batch 1", toy, 1)),
            budget_steps=2,
            data_resolution=32,
            data_batch=2,
            data_seconds=0.05,
            train_flags=toy,
            train_model_size=None,
            train_batch=2,
            train_steps=4,
            fp16_steps=4,
            nan_steps=(1,),
            log_interval=1,
            steady_from=1,
            compare_last=4,
            workers=0,
            train_workers=1,
        )


def model_config(spec: dict):
    """A ModelConfig from a plan entry: ``{"size": 256}`` is the preset, anything else explicit fields."""
    from torchsae.config import ModelConfig, preset

    return preset(spec["size"]) if "size" in spec else ModelConfig(**spec)


def describe_model(spec: dict) -> str:
    if "size" in spec:
        return f"--model-size {spec['size']}"
    model = model_config(spec)
    return (
        f"{model.archi} {model.resolution} ({model.ae_dims}/{model.resolved_e_dims}/"
        f"{model.resolved_d_dims}/{model.resolved_d_mask_dims})"
    )


# ---------------------------------------------------------------------------------------------------
# records: rows.jsonl is the one source; results.json and results.md are rendered from it
# ---------------------------------------------------------------------------------------------------


def append_record(out: Path, record: dict) -> None:
    """One JSON line, flushed and synced, then the two result files rendered again."""
    line = json.dumps(record, default=_json_default, allow_nan=True)
    with open(out / "rows.jsonl", "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    write_report(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def read_records(out: Path) -> list[dict]:
    path = out / "rows.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return records


def collect(records: list[dict]) -> dict:
    """``{"meta", "stages": {name: last status}, "rows": {stage: [rows]}}`` from the records."""
    meta: dict = {}
    stages: dict[str, dict] = {}
    rows: dict[str, list[dict]] = {}
    for record in records:
        kind = record.get("kind")
        if kind == "meta":
            meta.update({k: v for k, v in record.items() if k != "kind"})
        elif kind == "stage":
            stages.setdefault(record["stage"], {}).update({k: v for k, v in record.items() if k != "kind"})
        elif kind == "row":
            rows.setdefault(record["stage"], []).append({k: v for k, v in record.items() if k != "kind"})
    return {"meta": meta, "stages": stages, "rows": rows}


def write_report(out: Path) -> None:
    from torchsae.fileio import atomic_write_text

    results = collect(read_records(out))
    results["targets"] = evaluate_targets(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=_json_default))
    atomic_write_text(out / "results.md", render_markdown(results))


# ---------------------------------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------------------------------


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def loss_band(results: dict) -> dict | None:
    """bf16 vs fp32: relative difference of the mean (loss A + loss B)/2 over the last logged steps."""
    runs = {
        r.get("run"): r
        for r in _ok(results["rows"].get("train_bf16", []) + results["rows"].get("train_fp32", []))
    }
    bf16, fp32 = runs.get("bf16"), runs.get("fp32")
    if not bf16 or not fp32:
        return None
    last = int(bf16.get("compare_last") or 100)

    def tail_mean(run: dict) -> float | None:
        curve = run.get("loss_curve") or []
        if not curve:
            return None
        end = max(step for step, _ in curve)
        values = [v for step, v in curve if step > end - last]
        return sum(values) / len(values) if values else None

    a, b = tail_mean(bf16), tail_mean(fp32)
    if a is None or b is None or b == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return {"bf16": a, "fp32": b, "relative": None, "last_steps": last}
    return {"bf16": a, "fp32": b, "relative": (a - b) / b, "last_steps": last}


def evaluate_targets(results: dict) -> list[dict]:
    """One entry per target: what was measured and PASS / MISS / not measured."""
    rows, dry = results["rows"], bool(results["meta"].get("dry_run"))
    targets = []

    def add(name: str, measured: str, passed: bool | None, note: str = "") -> None:
        verdict = "not measured" if passed is None else ("PASS" if passed else "MISS")
        if dry and passed is not None:
            verdict = f"dry run: {verdict}"
        targets.append({"target": name, "measured": measured, "verdict": verdict, "note": note})

    bench = [
        r
        for r in _ok(rows.get("train_bench", []) + rows.get("train_compile", []))
        if r.get("target_model") and r.get("amp") == "bfloat16" and r.get("mfu_vs_bf16_peak") is not None
    ]
    if bench:
        best = max(bench, key=lambda r: r["mfu_vs_bf16_peak"])
        label = f"{best['mfu_vs_bf16_peak']:.1%} (batch {best['batch_size']}, {'compiled' if best['compile'] else 'eager'})"
        add("bf16 MFU, df-ud 256 DFL default dims ≥ 45 %", label, best["mfu_vs_bf16_peak"] >= MFU_TARGET)
    else:
        add("bf16 MFU, df-ud 256 DFL default dims ≥ 45 %", "–", None)

    data = [r for r in _ok(rows.get("data", [])) if r.get("what") == "end_to_end"]
    if data:
        rate = data[0]["samples_per_s"]
        add(
            "data path ≥ 10,000 samples/s at 256, augmentation on the GPU",
            f"{rate:,.0f} samples/s",
            rate >= DATA_TARGET,
        )
    else:
        add("data path ≥ 10,000 samples/s at 256, augmentation on the GPU", "–", None)

    memory = [r for r in _ok(rows.get("memory_predict", [])) if r.get("relative_error") is not None]
    if memory:
        worst = max(memory, key=lambda r: abs(r["relative_error"]))
        passed = all(abs(r["relative_error"]) <= MEMORY_TOLERANCE for r in memory)
        add(
            "memory prediction within 15 %",
            f"worst {worst['relative_error']:+.1%} ({len(memory)} configs)",
            passed,
            worst["config"],
        )
    else:
        add("memory prediction within 15 %", "–", None, "needs a GPU probe")

    budget = [r for r in rows.get("memory_8gib", []) if r.get("status") in ("ok", "oom")]
    if budget:
        fits = [r for r in budget if r.get("fits")]
        add(
            "8 GiB plans train without running out of memory",
            f"{len(fits)} of {len(budget)} fit",
            len(fits) == len(budget) and len(budget) >= 2,
        )
    else:
        add("8 GiB plans train without running out of memory", "–", None)

    band = loss_band(results)
    if band and band["relative"] is not None:
        add(
            "bf16 loss within 5 % of fp32 (same seed)",
            f"{band['relative']:+.2%} over the last {band['last_steps']} steps",
            abs(band["relative"]) <= LOSS_BAND,
        )
    else:
        add("bf16 loss within 5 % of fp32 (same seed)", "–", None)

    fp16 = _ok(rows.get("train_fp16", []))
    if fp16:
        run = fp16[0]
        add(
            "fp16: scaler and NaN guard",
            f"{run.get('skipped_steps')} skipped of {len(run.get('nan_steps') or [])} injected, "
            f"scale {run.get('scaler_scale')}",
            bool(run.get("guard_ok")),
        )
    else:
        add("fp16: scaler and NaN guard", "–", None)

    export = _ok(rows.get("export", []))
    if export:
        e = export[0]
        add(
            "ONNX Runtime (CPU) matches PyTorch",
            f"max |diff| {e['max_diff']:.1e} (≤ {e['tolerance']:.0e})",
            e["max_diff"] <= e["tolerance"],
        )
    else:
        add("ONNX Runtime (CPU) matches PyTorch", "–", None)
    return targets


# ---------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------


def _f(value: Any, fmt: str = "{:.1f}", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def _gib(value: Any) -> str:
    return _f(value / 2**30 if isinstance(value, (int, float)) else None, "{:.2f}")


def render_markdown(results: dict) -> str:
    meta, stages, rows = results["meta"], results["stages"], results["rows"]
    dry = bool(meta.get("dry_run"))
    out = [f"## GPU validation (issue 18){' — DRY RUN' if dry else ''} ({meta.get('started', '?')})", ""]
    if dry:
        out += [
            "**Dry run: toy sizes on the CPU. None of these figures measures a GPU; the verdicts only "
            "show that every stage and the report work.**",
            "",
        ]
    out += [
        f"Machine: {meta.get('machine', '?')}; GPU: {meta.get('gpu', '?')}; Python {meta.get('python', '?')}, "
        f"torch {meta.get('torch', '?')}. Command: `{meta.get('command', '?')}`. Budget {meta.get('budget_s', '?')} s.",
        "",
    ]
    missing = meta.get("missing") or {}
    if missing:
        out.append("Missing packages: " + "; ".join(f"`{m}` ({why})" for m, why in missing.items()) + ".")
        out.append("")
    out += ["### Targets", "", "| target | measured | verdict | note |", "|---|---|---|---|"]
    out += [
        f"| {t['target']} | {t['measured']} | {t['verdict']} | {t['note']} |"
        for t in results.get("targets", [])
    ]
    out += [
        "",
        "### Stages",
        "",
        "| stage | status | seconds | estimate (H200) | detail |",
        "|---|---|---|---|---|",
    ]
    for stage in STAGES:
        if stage.name not in stages:
            continue  # not selected (--stages)
        s = stages[stage.name]
        detail = str(s.get("detail", "")).replace("|", "/").replace("\n", " ")[:300]
        out.append(
            f"| {stage.name} | {s.get('status', 'not started')} | {_f(s.get('seconds'), '{:.0f}')} | "
            f"{stage.estimate:.0f} | {detail} |"
        )
    peak = _ok(rows.get("peak", []))
    if peak:
        p = peak[0]
        out += [
            "",
            f"bf16 matmul peak: **{p['flops'] / 1e12:.1f} TFLOP/s** ({p['size']}³, best of 3) on {p['device_name']}.",
        ]
    bench = rows.get("train_bench", []) + rows.get("train_compile", [])
    if bench:
        out += [
            "",
            "### Training step (`bench train`, synthetic batch)",
            "",
            "MFU = counted FLOPs per step ÷ step time ÷ the bf16 peak above; the last-but-one column "
            "uses the peak of the row's own dtype (TF32 for fp32).",
            "",
            "| model | batch/side | amp | channels_last | compile | ms/step | samples/s | GFLOP/step | "
            "MFU vs bf16 peak | MFU vs own dtype | peak memory GiB | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bench:
            compile_ = (
                "yes" + (" (eager fallback)" if r.get("compile_fallback") else "")
                if r.get("compile")
                else "no"
            )
            out.append(
                f"| {r.get('label', '?')} | {r.get('batch_size', '?')} | {r.get('amp', r.get('amp_requested', '?'))} | "
                f"{'on' if r.get('channels_last_requested') else 'off'} | {compile_} | {_f(r.get('ms_per_step'))} | "
                f"{_f(r.get('samples_per_s'))} | {_f((r.get('flops_per_step') or 0) / 1e9 if r.get('flops_per_step') else None)} | "
                f"{_f(r.get('mfu_vs_bf16_peak'), '{:.1%}')} | {_f(r.get('mfu'), '{:.1%}')} | "
                f"{_gib(r.get('peak_memory_bytes'))} | {_status(r)} |"
            )
    memory = rows.get("memory_predict", [])
    if memory:
        out += [
            "",
            "### Memory planner: predicted vs measured peak",
            "",
            "Predicted: `estimate_step_memory` (CPU, fake tensors). Measured: `cuda_probe_peak` (two real "
            "steps, `max_memory_allocated`). Error = (predicted − measured) ÷ measured; target ±15 %.",
            "",
            "| config | predicted GiB | measured GiB | error | status |",
            "|---|---|---|---|---|",
        ]
        for r in memory:
            out.append(
                f"| {r.get('config')} | {_gib(r.get('predicted_bytes'))} | {_gib(r.get('measured_bytes'))} | "
                f"{_f(r.get('relative_error'), '{:+.1%}')} | {_status(r)} |"
            )
    budget = rows.get("memory_8gib", [])
    if budget:
        out += [
            "",
            "### `--memory-budget 8GiB` under an 8 GiB memory fraction",
            "",
            "| run | plan | steps | max allocated GiB | max reserved GiB | fits | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in budget:
            out.append(
                f"| {r.get('run')} | {r.get('plan', '–')} | {r.get('steps', '–')} | {_gib(r.get('max_allocated'))} | "
                f"{_gib(r.get('max_reserved'))} | {'yes' if r.get('fits') else 'no'} | {_status(r)} |"
            )
    data = rows.get("data", [])
    if data:
        out += ["", "### Data path", "", "| what | samples/s | detail | status |", "|---|---|---|---|"]
        for r in data:
            out.append(
                f"| {r.get('what')} | {_f(r.get('samples_per_s'), '{:,.0f}')} | {r.get('detail', '')} | {_status(r)} |"
            )
    train = rows.get("train_bf16", []) + rows.get("train_fp32", []) + rows.get("train_fp16", [])
    if train:
        out += [
            "",
            "### `torchsae train` on the demo faceset",
            "",
            "steps/s and samples/s from step timestamps after the warm-up; data wait = host time inside the "
            "data stream's `next()` (loader queue, host→device copies, augmentation launch) ÷ wall time.",
            "",
            "| run | model | steps | steps/s | samples/s | data wait | final loss | skipped steps | peak memory GiB | status |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in train:
            out.append(
                f"| {r.get('run')} | {r.get('model', '–')} | {r.get('steps', '–')} | {_f(r.get('steps_per_s'), '{:.2f}')} | "
                f"{_f(r.get('samples_per_s'))} | {_f(r.get('data_wait_share'), '{:.1%}')} | "
                f"{_f(r.get('final_loss'), '{:.4f}')} | {r.get('skipped_steps', '–')} | {_gib(r.get('peak_memory_bytes'))} | {_status(r)} |"
            )
        band = loss_band(results)
        if band:
            out += [
                "",
                f"Loss, mean of (A + B)/2 over the last {band['last_steps']} steps: bf16 {_f(band['bf16'], '{:.4f}')}, "
                f"fp32 {_f(band['fp32'], '{:.4f}')}, relative {_f(band['relative'], '{:+.2%}')} (band ±5 %).",
            ]
        curves = {r.get("run"): dict(map(tuple, r.get("loss_curve") or [])) for r in _ok(train)}
        steps = sorted({s for curve in curves.values() for s in curve})
        if steps:
            names = list(curves)
            out += ["", "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for s in steps:
                out.append(f"| {s} | " + " | ".join(_f(curves[n].get(s), "{:.4f}") for n in names) + " |")
        for r in _ok(rows.get("train_fp16", [])):
            out += [
                "",
                f"fp16: NaN batches injected at steps {r.get('nan_steps')}; skipped steps {r.get('skipped_steps')}; "
                f"GradScaler scale {r.get('scaler_scale')} (started at {r.get('scaler_init')}: "
                f"{r.get('scaler_backoffs')} backoffs); weights finite: {r.get('weights_finite')}.",
            ]
    export = rows.get("export", [])
    if export:
        out += [
            "",
            "### Export",
            "",
            "| checkpoint | exporter | opset | size MiB | max diff vs PyTorch (CPU) | tolerance | ORT vs PyTorch on the training device (fp32, TF32 off) | seconds | status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in export:
            out.append(
                f"| {r.get('checkpoint_of', '–')} | {r.get('exporter', '–')} | {r.get('opset', '–')} | "
                f"{_f((r.get('size_bytes') or 0) / 2**20 if r.get('size_bytes') else None)} | {_f(r.get('max_diff'), '{:.1e}')} | "
                f"{_f(r.get('tolerance'), '{:.0e}')} | {_f(r.get('device_max_diff'), '{:.1e}')} | {_f(r.get('seconds'), '{:.0f}')} | {_status(r)} |"
            )
    return "\n".join(out) + "\n"


def _status(row: dict) -> str:
    status = str(row.get("status", "?"))
    if row.get("error"):
        status += ": " + str(row["error"]).replace("|", "/").replace("\n", " ")[:160]
    return status


# ---------------------------------------------------------------------------------------------------
# stage workers (each runs in its own process: ``--worker NAME``)
# ---------------------------------------------------------------------------------------------------


class StageAbort(Exception):
    """The stage cannot go on (e.g. the CUDA context is gone): it ends as an error, the next one starts."""


@dataclass
class Context:
    stage: str
    plan: Plan
    out: Path
    work: Path
    deadline: float  # wall-clock time (time.time()) by which the worker should be done

    @property
    def device(self):
        import torch

        return torch.device(self.plan.device)

    def left(self) -> float:
        return self.deadline - time.time()

    def row(self, row: dict) -> None:
        append_record(self.out, {"kind": "row", "stage": self.stage, **row})
        print(f"[{self.stage}] {_brief(row)}", flush=True)

    def skip(self, row: dict, reason: str = "skipped: time") -> None:
        self.row({**row, "status": reason})

    def rows_of(self, stage: str) -> list[dict]:
        return collect(read_records(self.out))["rows"].get(stage, [])

    @property
    def faceset(self) -> Path:
        return self.work / "faceset"


def _brief(row: dict) -> str:
    keys = (
        "label",
        "config",
        "run",
        "what",
        "status",
        "ms_per_step",
        "samples_per_s",
        "mfu_vs_bf16_peak",
        "error",
    )
    return ", ".join(f"{k}={row[k]}" for k in keys if k in row and row[k] is not None)


def short_error(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}"


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recover(device) -> None:
    """Free what a failed row left; a CUDA context that no longer synchronises ends the stage."""
    import torch

    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - a sticky CUDA error: nothing more can run here
            raise StageAbort(f"CUDA context lost ({short_error(exc)})") from exc


def stage_peak(ctx: Context) -> None:
    import torch

    from torchsae.train.bench import device_name, matmul_peak_flops

    dev = ctx.device
    info: dict[str, Any] = {"device_name": device_name(dev), "torch": torch.__version__}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(
            total_memory_bytes=props.total_memory,
            multiprocessors=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    size = ctx.plan.peak_size or 8192
    flops = matmul_peak_flops(dev, torch.bfloat16, size=size, seconds=ctx.plan.peak_seconds)
    ctx.row({"status": "ok", "what": "bf16 matmul peak", "size": size, "flops": flops, **info})


def stage_faceset(ctx: Context) -> None:
    from pipelines.index import ensure_index
    from torchsae.demo import make_demo_faceset

    start = time.perf_counter()
    faceset = make_demo_faceset(
        ctx.faceset, ctx.plan.faces, seed=0, truth_count=0, workers=os.cpu_count() or 1
    )
    rendered = time.perf_counter() - start
    ctx.row({"status": "ok", "what": "demo faceset", "faces_per_side": ctx.plan.faces, "seconds": rendered})
    for resolution in ctx.plan.index_resolutions:
        for folder in faceset.dirs:
            start = time.perf_counter()
            index = ensure_index(folder, resolution, "xseg", progress=False, face_type="wf")
            ctx.row(
                {
                    "status": "ok",
                    "what": f"index {folder.name} at {resolution}",
                    "files": len(index),
                    "seconds": time.perf_counter() - start,
                }
            )


def _peak_cache(dry: bool, device, bf16_peak: float | None) -> Callable:
    """``matmul_peak_flops`` measured once per (device, dtype) in this process (toy sizes in a dry run);
    bf16 is the peak stage's measurement when there is one."""
    import torch

    from torchsae.train import bench

    measure, cache = bench.matmul_peak_flops, {}
    if bf16_peak:
        cache[(str(device), str(torch.bfloat16))] = bf16_peak

    def cached(device, dtype, size=None, seconds=0.5):
        key = (str(device), str(dtype))
        if key not in cache:
            cache[key] = measure(device, dtype, size=128 if dry else size, seconds=0.01 if dry else seconds)
        return cache[key]

    return cached


def _bench_rows(ctx: Context, compile_: bool) -> list[dict]:
    plan = ctx.plan
    rows = []
    if compile_:
        for batch in plan.compile_batches:
            rows.append({"spec": plan.bench_model, "batch": batch, "amp": "bf16", "cl": True, "target": True})
        return rows
    for batch in plan.bench_batches:
        for cl in (True, False):
            for amp in ("bf16", "none", "fp16"):
                rows.append({"spec": plan.bench_model, "batch": batch, "amp": amp, "cl": cl, "target": True})
    # the most informative first: channels_last on before off, so a short budget still has them
    rows.sort(key=lambda r: (not r["cl"], r["batch"] != plan.bench_batches[0]))
    for number, (label, spec, batch) in enumerate(plan.preset_rows):
        rows.insert(
            4 + number,
            {"spec": spec, "batch": batch, "amp": "bf16", "cl": True, "target": False, "label": label},
        )
    return rows


def stage_train_bench(ctx: Context, compile_: bool = False) -> None:
    from unittest import mock

    import torch

    from torchsae.train import bench

    dev = ctx.device
    peak_rows = [r for r in ctx.rows_of("peak") if r.get("status") == "ok"]
    bf16_peak = peak_rows[0]["flops"] if peak_rows else None
    patches = [mock.patch.object(bench, "matmul_peak_flops", _peak_cache(ctx.plan.dry, dev, bf16_peak))]
    if compile_ and ctx.plan.dry:  # inductor on 2 CPU cores takes minutes: dynamo with the eager backend
        import functools

        patches.append(mock.patch.object(torch, "compile", functools.partial(torch.compile, backend="eager")))
    row_seconds = ctx.plan.compile_row_seconds if compile_ else ctx.plan.bench_row_seconds
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        for item in _bench_rows(ctx, compile_):
            label = item.get("label") or describe_model(item["spec"])
            base = {
                "label": label,
                "batch_size": item["batch"],
                "amp_requested": item["amp"],
                "channels_last_requested": item["cl"],
                "compile": compile_,
                "target_model": item["target"],
            }
            if ctx.left() < row_seconds:
                ctx.skip(base)
                continue
            if compile_ and hasattr(torch, "_dynamo"):
                torch._dynamo.reset()  # each row compiles afresh (no dynamic-shape recompile from the last)
            start = time.perf_counter()
            try:
                result = bench.bench_train(
                    model_config(item["spec"]),
                    item["batch"],
                    ctx.plan.bench_steps,
                    amp=item["amp"],
                    compile=compile_,
                    device=str(dev),
                    warmup=max(ctx.plan.bench_warmup, 1 if compile_ else 0),  # compiles there
                    channels_last=item["cl"],
                )
            except Exception as exc:  # noqa: BLE001 - one row's failure is recorded, the next row runs
                ctx.row({**base, "status": "oom" if is_oom(exc) else "error", "error": short_error(exc)})
                recover(dev)
                continue
            seconds_per_step = result["ms_per_step"] / 1000.0
            result["mfu_vs_bf16_peak"] = (
                result["flops_per_step"] / seconds_per_step / bf16_peak if bf16_peak else None
            )
            result["bf16_peak_flops"] = bf16_peak
            ctx.row({**base, **result, "status": "ok", "row_seconds": time.perf_counter() - start})
            del result
            recover(dev)


def _train_config(spec: dict, batch: int, amp: str):
    from torchsae.config import Config

    cfg = Config()
    cfg.model = model_config(spec)
    cfg.train.batch_size, cfg.train.amp = batch, amp
    return cfg.validate()


def stage_memory_predict(ctx: Context) -> None:
    from torchsae.train.memory import cuda_probe_peak, estimate_step_memory
    from torchsae.train.precision import resolve_amp

    dev = ctx.device
    for label, spec, batch, amp, checkpoint in ctx.plan.memory_configs:
        base = {"config": label, "batch": batch, "amp": amp, "recompute": checkpoint}
        if ctx.left() < 8:
            ctx.skip(base)
            continue
        try:
            cfg = _train_config(spec, batch, amp)
            amp_dtype, _ = resolve_amp(amp, dev)
            start = time.perf_counter()
            predicted = estimate_step_memory(cfg, batch, checkpoint, amp_dtype).peak
            row = {**base, "predicted_bytes": predicted, "predict_seconds": time.perf_counter() - start}
            if dev.type != "cuda":
                ctx.row(
                    {
                        **row,
                        "status": "ok",
                        "measured_bytes": None,
                        "relative_error": None,
                        "note": "no GPU probe",
                    }
                )
                continue
            start = time.perf_counter()
            measured = cuda_probe_peak(cfg, batch, 1, checkpoint, dev)
            row["probe_seconds"] = time.perf_counter() - start
            if measured >= 2**62:
                ctx.row({**row, "status": "oom", "error": "the probe ran out of memory"})
                continue
            ctx.row(
                {
                    **row,
                    "status": "ok",
                    "measured_bytes": measured,
                    "relative_error": (predicted - measured) / measured,
                }
            )
        except Exception as exc:  # noqa: BLE001
            ctx.row({**base, "status": "error", "error": short_error(exc)})
            recover(dev)


class TimedStream:
    """The trainer's data stream, timed per ``next()``; optionally a NaN batch at chosen steps.

    Everything else (``state_dict``, ``close``, ``failed``...) goes to the wrapped stream.
    """

    def __init__(self, stream: Any, nan_steps: tuple[int, ...] = ()) -> None:
        self._stream, self.nan_steps, self.calls = stream, set(nan_steps), []

    def __iter__(self) -> TimedStream:
        return self

    def __next__(self) -> dict:
        start = time.perf_counter()
        batch = next(self._stream)
        self.calls.append((start, time.perf_counter()))
        if len(self.calls) - 1 in self.nan_steps:
            batch = dict(batch)
            batch["warped_a"] = batch["warped_a"] * float("nan")
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def steady(self, skip: int) -> dict:
        """steps/s and the share of wall time spent inside ``next()``, from call ``skip`` on."""
        calls = self.calls[skip:]
        if len(calls) < 2:
            return {"steps_per_s": None, "data_wait_share": None}
        wall = calls[-1][0] - calls[0][0]
        waited = sum(end - start for start, end in calls[:-1])
        return {
            "steps_per_s": (len(calls) - 1) / wall,
            "data_wait_share": waited / wall,
            "timed_steps": len(calls) - 1,
        }


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def fileno(self) -> int:  # whoever needs a descriptor (child processes) gets the real stdout's
        return self.streams[0].fileno()


def run_training(
    ctx: Context, run: str, flags: dict, model_size: int | None, nan_steps: tuple[int, ...] = ()
) -> dict:
    """``torchsae train`` (the CLI's own config resolution and trainer) in this process, timed."""
    import torch

    from torchsae.train import trainer
    from torchsae.train.checkpoint import find_last_checkpoint, load_checkpoint
    from torchsae.train.data import rank_train_stream
    from torchsae.train.hooks import TrainHooks
    from torchsae.train.runconfig import resolve_run_config

    run_dir = ctx.work / "runs" / run
    shutil.rmtree(run_dir, ignore_errors=True)  # never resume an older run of the same name
    a, b = ctx.faceset / "A", ctx.faceset / "B"
    flags = {
        **flags,
        "data": {
            "data_dir_a": str(a),
            "data_dir_b": str(b),
            "backend": "torch",
            "workers": ctx.plan.workers,
            **flags.get("data", {}),
        },
        "train": {
            "run_dir": str(run_dir),
            "device": ctx.plan.device,
            "seed": 0,
            "log_interval": ctx.plan.log_interval,
            "keep": 1,
            **flags.get("train", {}),
        },
    }
    steps = flags["train"]["max_steps"]
    flags["train"].setdefault("preview_interval", steps)
    flags["train"].setdefault("save_interval", steps)
    config, _ = resolve_run_config(flags, model_size=model_size)
    holder: dict[str, TimedStream] = {}

    def timed(cfg, info):  # the trainer's own stream, timed, with NaN batches injected
        holder["stream"] = TimedStream(rank_train_stream(cfg, info), nan_steps)
        return holder["stream"]

    dev = torch.device(ctx.plan.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        result = trainer.train(config, hooks=TrainHooks(open_stream=timed))
    wall = time.perf_counter() - start
    row: dict[str, Any] = {
        "run": run,
        "model": f"{config.model.archi} {config.model.resolution}",
        "steps": result.step,
        "max_steps": steps,
        "batch_size": config.train.batch_size,
        "amp": config.train.amp,
        "wall_seconds": wall,
        "skipped_steps": result.skipped_steps,
        "plan": next(
            (line for line in printed.getvalue().splitlines() if line.startswith("Memory plan:")), None
        ),
    }
    if dev.type == "cuda":
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(dev)
        row["max_allocated"] = torch.cuda.max_memory_allocated(dev)
        row["max_reserved"] = torch.cuda.max_memory_reserved(dev)
    stream = holder.get("stream")
    if stream is not None:
        row.update(stream.steady(min(ctx.plan.steady_from, max(0, len(stream.calls) - 2))))
        if row.get("steps_per_s"):
            row["samples_per_s"] = row["steps_per_s"] * 2 * config.train.batch_size
    checkpoint = result.checkpoint or find_last_checkpoint(run_dir)
    row["checkpoint"] = str(checkpoint) if checkpoint else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        history = (state.get("metrics") or {}).get("history") or {}
        a_curve = dict((int(s), float(v)) for s, v in history.get("loss_a", []))
        b_curve = dict((int(s), float(v)) for s, v in history.get("loss_b", []))
        curve = [[s, (a_curve[s] + b_curve[s]) / 2] for s in sorted(a_curve) if s in b_curve]
        row["loss_curve"] = curve
        row["final_loss"] = curve[-1][1] if curve else None
        row["weights_finite"] = all(
            bool(torch.isfinite(t).all()) for t in state["model"].values() if torch.is_floating_point(t)
        )
        scaler = state.get("scaler") or {}
        row["scaler_scale"] = scaler.get("scale")
        del state
    return row


def _budget_flags(spec: dict, batch: int, steps: int) -> dict:
    model = {k: v for k, v in spec.items() if k != "size"}
    return {"model": model, "train": {"batch_size": batch, "max_steps": steps, "memory_budget": "8GiB"}}


def stage_memory_8gib(ctx: Context) -> None:
    import torch

    dev = ctx.device
    fraction = None
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        fraction = min(1.0, BUDGET_BYTES / total)
        torch.cuda.set_per_process_memory_fraction(fraction, dev)
    for number, (label, spec, batch) in enumerate(ctx.plan.budget_runs):
        base = {"run": label, "memory_fraction": fraction, "budget": "8GiB"}
        if ctx.left() < 15:
            ctx.skip(base)
            continue
        try:
            row = run_training(
                ctx, f"budget_{number}", _budget_flags(spec, batch, ctx.plan.budget_steps), None
            )
            fits = row["steps"] == ctx.plan.budget_steps and (row.get("max_reserved") or 0) <= BUDGET_BYTES
            ctx.row({**base, **row, "status": "ok", "fits": fits})
        except Exception as exc:  # noqa: BLE001
            oom = is_oom(exc)
            ctx.row({**base, "status": "oom" if oom else "error", "fits": False, "error": short_error(exc)})
            recover(dev)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _train_flags(ctx: Context, amp: str, steps: int) -> dict:
    model = dict(ctx.plan.train_flags)
    return {
        "model": model,
        "data": {"workers": ctx.plan.train_workers},
        "train": {"batch_size": ctx.plan.train_batch, "max_steps": steps, "amp": amp},
    }


def stage_train(ctx: Context, run: str) -> None:
    amp = {"bf16": "bf16", "fp32": "none", "fp16": "fp16"}[run]
    steps = ctx.plan.fp16_steps if run == "fp16" else ctx.plan.train_steps
    nan_steps = ctx.plan.nan_steps if run == "fp16" else ()
    row = run_training(ctx, run, _train_flags(ctx, amp, steps), ctx.plan.train_model_size, nan_steps)
    row.update({"run": run, "compare_last": ctx.plan.compare_last, "nan_steps": list(nan_steps)})
    if run == "fp16":
        init = SCALER_INIT
        scale = row.get("scaler_scale")
        row["scaler_init"] = init
        row["scaler_backoffs"] = round(math.log2(init / scale)) if scale else None
        row["guard_ok"] = bool(
            row["steps"] == steps
            and row["skipped_steps"] >= len(nan_steps)
            and row.get("weights_finite")
            and row.get("final_loss") is not None
            and math.isfinite(row["final_loss"])
            and scale is not None
            and (row["scaler_backoffs"] or 0) >= len(nan_steps)
        )
    ctx.row({**row, "status": "ok"})


def timed_rate(step: Callable[[], int], seconds: float, device, warmup: int = 3) -> float:
    """Items per second of ``step()`` (which returns the items it did) over ``seconds``, after warm-up."""
    for _ in range(warmup):
        step()
    sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        done += step()
    sync(device)
    return done / (time.perf_counter() - start)


def _data_loader_rows(ctx: Context, stream: Any, cfg: Any) -> None:
    """End to end (loaders + index masks + augmentation on the device), augmentation alone, host alone."""
    import torch

    from pipelines.augment import Augmenter

    dev, plan = ctx.device, ctx.plan
    res, batch = plan.data_resolution, plan.data_batch
    try:
        detail = f"R={res}, batch {batch} per side, {plan.workers} loader workers per side, A+B faces counted"
        try:
            # warm-up drains what the workers prefetched while they started (prefetch_factor 4)
            rate = timed_rate(
                lambda: (next(stream), 2 * batch)[1], plan.data_seconds, dev, 3 + 4 * plan.workers
            )
            ctx.row(
                {
                    "what": "end_to_end",
                    "status": "ok",
                    "samples_per_s": rate,
                    "detail": "torch backend + augmentation on " + str(dev) + "; " + detail,
                }
            )
        except Exception as exc:  # noqa: BLE001
            ctx.row({"what": "end_to_end", "status": "error", "error": short_error(exc)})
        if ctx.left() > 5:
            try:
                loaded = next(stream.loaders["a"])
                images = loaded["images"].to(dev)
                index = stream.indexes["a"]
                masks = torch.from_numpy(index.gather_masks(loaded["indices"].numpy())).to(dev)
                augment = Augmenter(res, cfg.data, seed=0)
                counter = iter(range(1 << 62))

                def aug_step() -> int:
                    i = next(counter)
                    out = augment(images, masks, step=i, rank=0, side="ab"[i % 2])
                    return out["warped"].shape[0]

                rate = timed_rate(aug_step, plan.data_seconds, dev)
                ctx.row(
                    {
                        "what": "augmentation_only",
                        "status": "ok",
                        "samples_per_s": rate,
                        "detail": f"Augmenter on {dev}, batch {batch}, sides A and B alternately",
                    }
                )
            except Exception as exc:  # noqa: BLE001
                ctx.row({"what": "augmentation_only", "status": "error", "error": short_error(exc)})
        else:
            ctx.skip({"what": "augmentation_only"})
        if ctx.left() > 8:
            try:
                from pipelines.bench import machine_host_rate

                workers = 2 * plan.workers  # the whole machine (0 in a dry run: in-process)
                rate = machine_host_rate(stream.indexes["a"], batch, workers, plan.data_seconds)
                ctx.row(
                    {
                        "what": "host_loader_only",
                        "status": "ok",
                        "samples_per_s": rate,
                        "detail": f"TorchLoader, {workers} workers, decode + masks, no augmentation",
                    }
                )
            except Exception as exc:  # noqa: BLE001
                ctx.row({"what": "host_loader_only", "status": "error", "error": short_error(exc)})
        else:
            ctx.skip({"what": "host_loader_only"})
    finally:
        stream.close()


def stage_data(ctx: Context) -> None:
    import torch

    from pipelines.batch import make_train_batches
    from pipelines.dali_loader import dali_available
    from torchsae.config import Config, ModelConfig

    dev, plan = ctx.device, ctx.plan
    res, batch = plan.data_resolution, plan.data_batch
    cfg = Config()
    cfg.model = ModelConfig(archi="df-ud", resolution=res, **(TOY_DIMS if plan.dry else {}))
    cfg.data.data_dir_a, cfg.data.data_dir_b = str(ctx.faceset / "A"), str(ctx.faceset / "B")
    cfg.data.backend, cfg.data.workers = "torch", plan.workers
    cfg.train.batch_size = batch
    cfg.validate()

    try:
        stream = make_train_batches(cfg, rank=0, world_size=1, device=dev, progress=False)
    except Exception as exc:  # noqa: BLE001 - the decode rows below need no loader
        stream = None
        ctx.row({"what": "end_to_end", "status": "error", "error": short_error(exc)})
    if stream is not None:
        _data_loader_rows(ctx, stream, cfg)
    if importlib.util.find_spec("torchvision") is None:
        ctx.skip({"what": "nvjpeg_decode"}, "skipped: torchvision is not installed")
    elif ctx.left() < 5:
        ctx.skip({"what": "nvjpeg_decode"})
    else:
        try:
            import torchvision
            from torchvision.io import decode_jpeg

            paths = sorted((ctx.faceset / "A").glob("*.jpg"))[: max(batch, 1)]
            blobs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
            rate = timed_rate(lambda: len(decode_jpeg(blobs, device=dev)), plan.data_seconds, dev)
            ctx.row(
                {
                    "what": "nvjpeg_decode" if dev.type == "cuda" else "decode_jpeg_cpu",
                    "status": "ok",
                    "samples_per_s": rate,
                    "detail": f"torchvision {torchvision.__version__} decode_jpeg(list of {len(blobs)}, device={dev}), full 512² decode",
                }
            )
        except Exception as exc:  # noqa: BLE001
            ctx.row({"what": "nvjpeg_decode", "status": "error", "error": short_error(exc)})
    if dali_available():
        ctx.skip({"what": "dali"}, "skipped: not part of this check (torchsae bench data --backend dali)")
    else:
        ctx.skip({"what": "dali"}, "skipped: NVIDIA DALI is not installed")


def stage_export(ctx: Context) -> None:
    import numpy as np
    import torch

    from torchsae.export.layouts import LAYOUTS, SwapGraph
    from torchsae.export.onnx import export_onnx
    from torchsae.export.source import load_model_for_export
    from torchsae.export.verify import load_faces, make_session, verification_inputs

    source = None
    for stage in ("train_bf16", "train_fp32", "train_fp16"):
        done = [r for r in ctx.rows_of(stage) if r.get("status") == "ok" and r.get("checkpoint")]
        if done and Path(done[0]["checkpoint"]).is_file():
            source = (stage, Path(done[0]["checkpoint"]))
            break
    if source is None:
        ctx.skip({"what": "onnx"}, "skipped: no trained checkpoint (the train stages did not finish)")
        return
    start = time.perf_counter()
    model, cfg, step = load_model_for_export(source[1])
    resolution = cfg.model.resolution
    faces = load_faces(ctx.faceset / "A", resolution, limit=4)
    output = ctx.work / "export" / "swap.onnx"
    result = export_onnx(model, output, cfg.model, step=step, faces=faces)
    row = {
        "what": "onnx",
        "checkpoint_of": source[0],
        "checkpoint": str(source[1]),
        "exporter": result.exporter,
        "opset": result.opset,
        "size_bytes": result.size_bytes,
        "max_diff": result.report.max_diff,
        "tolerance": result.report.tolerance,
        "diffs": result.report.diffs,
        "seconds": time.perf_counter() - start,
    }
    dev = ctx.device
    try:  # the same graph against the model on the training device, fp32 with TF32 off (informative)
        matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            spec = LAYOUTS[result.layout]
            feed = spec.to_input(verification_inputs(resolution, None)["random_b1"])
            got = make_session(output).run(None, {spec.input_name: feed})
            with torch.no_grad():
                want = SwapGraph(model.to(dev), result.layout).eval()(torch.from_numpy(feed).to(dev))
            row["device_max_diff"] = max(
                float(np.max(np.abs(g.astype(np.float64) - w.float().cpu().numpy().astype(np.float64))))
                for g, w in zip(got, want, strict=True)
            )
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    except Exception as exc:  # noqa: BLE001
        row["device_error"] = short_error(exc)
    ctx.row({**row, "status": "ok"})


WORKERS: dict[str, Callable[[Context], None]] = {
    "peak": stage_peak,
    "faceset": stage_faceset,
    "train_bench": stage_train_bench,
    "memory_predict": stage_memory_predict,
    "memory_8gib": stage_memory_8gib,
    "data": stage_data,
    "train_bf16": lambda ctx: stage_train(ctx, "bf16"),
    "train_fp32": lambda ctx: stage_train(ctx, "fp32"),
    "train_fp16": lambda ctx: stage_train(ctx, "fp16"),
    "export": stage_export,
    "train_compile": lambda ctx: stage_train_bench(ctx, compile_=True),
}


def worker_main(args: argparse.Namespace) -> int:
    """One stage (``--worker NAME``): rows as they come; an exception becomes the stage's error record."""
    plan = Plan.toy() if args.dry_run else Plan.full()
    ctx = Context(args.worker, plan, Path(args.out), Path(args.work_dir), args.deadline)
    return run_worker(ctx, args.fail_stage, args.hang_stage)


def run_worker(ctx: Context, fail_stage: str | None = None, hang_stage: str | None = None) -> int:
    """Run ``ctx.stage``; 0 when it returned, 1 when it raised (recorded with its traceback)."""
    try:
        if ctx.stage in (fail_stage or "").split(","):
            raise RuntimeError(f"--fail-stage {ctx.stage}: simulated failure")
        if ctx.stage in (hang_stage or "").split(","):
            time.sleep(3600)
        if ctx.plan.dry:
            import torch

            torch.set_num_threads(1)
        WORKERS[ctx.stage](ctx)
    except Exception as exc:  # noqa: BLE001 - everything is reported, then the stage ends
        append_record(
            ctx.out,
            {
                "kind": "stage",
                "stage": ctx.stage,
                "status": "error",
                "detail": short_error(exc),
                "traceback": traceback.format_exc()[-4000:],
            },
        )
        traceback.print_exc()
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------
# the orchestrator
# ---------------------------------------------------------------------------------------------------


def package_report(stages: tuple[Stage, ...]) -> tuple[dict, dict]:
    """``({module: version or None}, {missing module: which stages need it})``."""
    found, missing = {}, {}
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            found[name] = None
            users = [s.name for s in stages if name in s.needs]
            if name == "torchvision":
                users = ["data (nvJPEG row)"]
            if name == "triton":
                users = ["train_compile (falls back to eager)"]
            missing[name] = f"{PACKAGES[name]}; needed by: {', '.join(users) or 'nothing in this plan'}"
        else:
            found[name] = _version_of(name)
    return found, missing


def _version_of(name: str) -> str:
    from importlib import metadata

    dist = {"cv2": "opencv-python-headless", "yaml": "pyyaml"}.get(name, name)
    for candidate in (dist, "opencv-python", name):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return "installed"


def install_wheels(wheels: Path, site: Path, log) -> str:
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        return f"--wheels {wheels}: no .whl files there"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--target", str(site), *files]
    try:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"pip failed: {short_error(exc)}"
    if done.returncode != 0:
        return f"pip exited {done.returncode} (see log.txt)"
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return "installed " + ", ".join(Path(f).name.split("-")[0] for f in files)


def _machine() -> str:
    """CPU model and cores, as ``pipelines.bench.machine_description`` says it (which needs torch and
    simplejpeg; the orchestrator imports neither)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_description() -> str:
    try:
        done = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        return done.stdout.strip() or "nvidia-smi printed nothing"
    except (OSError, subprocess.SubprocessError):
        return "none (no nvidia-smi)"


def _trim_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_LIMIT:
            data = path.read_bytes()[-LOG_LIMIT:]
            path.write_bytes(b"[... earlier output cut ...]\n" + data)


class Orchestrator:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args, self.argv = args, argv
        self.start = time.time()
        self.deadline = self.start + args.budget
        self.out = Path(args.out).resolve()  # the stage processes run in the repository root
        work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="torchsae_gpu_check_"))
        self.work = work.resolve()
        self.own_work = not args.work_dir  # a folder of our own is removed at the end
        self.proc: subprocess.Popen | None = None
        self.interrupted = False

    def record_stage(self, stage: str, **fields) -> None:
        append_record(self.out, {"kind": "stage", "stage": stage, **fields})

    def _terminate(self, signum, _frame) -> None:
        self.interrupted = True
        self._kill()
        raise KeyboardInterrupt(f"signal {signum}")

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.own_work:
                shutil.rmtree(self.work, ignore_errors=True)

    def _run(self) -> int:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        for name in FIELDS:
            (self.out / name).unlink(missing_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "log.txt"
        signal.signal(signal.SIGTERM, self._terminate)
        with open(log_path, "ab", buffering=0) as log:
            site_note, site = None, None
            if args.wheels:
                site = self.work / "site"
                site_note = install_wheels(Path(args.wheels), site, log)
            found, missing = package_report(STAGES)
            has_gpu = False if args.dry_run else _cuda_available()  # a dry run never imports torch here
            selected = [s for s in STAGES if not args.stages or s.name in args.stages.split(",")]
            self.record_stage_plan_meta(found, missing, site_note, has_gpu)
            for name, why in missing.items():
                print(f"missing package {name}: {why}", flush=True)
            if site_note:
                print(f"--wheels: {site_note}", flush=True)
            if not args.dry_run and not has_gpu:
                for stage in selected:
                    self.record_stage(stage.name, status="skipped: no CUDA GPU (use --dry-run on a CPU)")
                print("no CUDA GPU here: nothing to validate (use --dry-run)", file=sys.stderr)
                return EXIT_NO_GPU
            env = dict(os.environ)
            paths = [str(REPO)] + ([str(site)] if site_note and site_note.startswith("installed") else [])
            env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
            env["TORCHSAE_NO_PROGRESS"] = "1"
            env.setdefault("PYTHONUNBUFFERED", "1")
            if args.dry_run:
                env.setdefault("OMP_NUM_THREADS", "1")
            if args.in_process:
                os.environ["TORCHSAE_NO_PROGRESS"] = "1"
            problems = 0
            try:
                for i, stage in enumerate(selected):
                    problems += not self.run_stage(stage, selected[i + 1 :], missing, env, log)
                    _trim_log(log_path)
            except KeyboardInterrupt:
                self.interrupted = True
                for stage in selected:
                    state = collect(read_records(self.out))["stages"].get(stage.name, {})
                    if state.get("status") in (None, "running"):
                        self.record_stage(stage.name, status="interrupted")
                return EXIT_STAGE_PROBLEM
            finally:
                self._kill()
        append_record(self.out, {"kind": "meta", "finished": _now(), "seconds": time.time() - self.start})
        if args.append_results and not args.dry_run:
            from results import append_results

            append_results((self.out / "results.md").read_text())
        print((self.out / "results.md").read_text())
        return EXIT_OK if problems == 0 else EXIT_STAGE_PROBLEM

    def record_stage_plan_meta(
        self, found: dict, missing: dict, site_note: str | None, has_gpu: bool
    ) -> None:
        machine = _machine()
        append_record(
            self.out,
            {
                "kind": "meta",
                "started": _now(),
                "dry_run": self.args.dry_run,
                "budget_s": self.args.budget,
                "command": "python benchmarks/gpu_check.py " + " ".join(self.argv),
                "python": platform.python_version(),
                "torch": found.get("torch"),
                "cuda_available": has_gpu,
                "gpu": gpu_description() if has_gpu else "none",
                "machine": machine,
                "packages": found,
                "missing": missing,
                "wheels": site_note,
                "work_dir": str(self.work),
                "plan": {
                    s.name: {"estimate_s": s.estimate, "min_s": s.minimum, "cap_s": s.cap} for s in STAGES
                },
            },
        )

    def run_stage(self, stage: Stage, later: list[Stage], missing: dict, env: dict, log) -> bool:
        """Run one stage in a child process; returns False when it did not finish cleanly."""
        absent = [m for m in stage.needs if m in missing]
        if absent:
            hint = " (carry its wheel: --wheels DIR)" if "simplejpeg" in absent else ""
            self.record_stage(stage.name, status=f"skipped: missing {', '.join(absent)}{hint}")
            return False
        done = collect(read_records(self.out))["stages"]
        failed = [name for name in stage.after if name in done and done[name].get("status") != "ok"]
        if failed:
            self.record_stage(stage.name, status=f"skipped: {', '.join(failed)} did not finish")
            return False
        now = time.time()
        scale = self.args.time_scale  # tests shrink the stages' minimum and cap
        reserve = sum(s.minimum * scale for s in later if not s.optional)
        available = self.deadline - now - reserve
        if available < stage.minimum * scale:
            self.record_stage(
                stage.name,
                status="skipped: time",
                detail=f"{available:.1f} s left after reserving {reserve:.1f} s",
            )
            return False
        allotted = min(stage.cap * scale, available)
        deadline = now + allotted - 3  # the worker's own clock; the hard kill comes at now + allotted
        self.record_stage(stage.name, status="running", allotted=allotted, estimate=stage.estimate)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", stage.name, "--out", str(self.out)]
        cmd += ["--work-dir", str(self.work), "--deadline", f"{deadline:.3f}"]
        for flag, value in (("--fail-stage", self.args.fail_stage), ("--hang-stage", self.args.hang_stage)):
            if value:
                cmd += [flag, value]
        if self.args.dry_run:
            cmd.append("--dry-run")
        log.write(f"\n===== {stage.name} ({_now()}, {allotted:.0f} s allotted) =====\n".encode())
        if self.args.in_process:  # tests: no process of its own, so no hard time limit either
            plan = Plan.toy() if self.args.dry_run else Plan.full()
            ctx = Context(stage.name, plan, self.out, self.work, deadline)
            returncode = run_worker(ctx, self.args.fail_stage, self.args.hang_stage)
            return self._finish(stage, returncode, now)
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), start_new_session=True
        )
        try:
            returncode = self.proc.wait(timeout=max(1.0, allotted))
        except subprocess.TimeoutExpired:
            self._kill()
            self.record_stage(
                stage.name,
                status="timeout",
                seconds=time.time() - now,
                detail=f"killed after {allotted:.0f} s",
            )
            return False
        finally:
            self.proc = None
        return self._finish(stage, returncode, now)

    def _finish(self, stage: Stage, returncode: int, started: float) -> bool:
        seconds = time.time() - started
        if returncode == 0:
            self.record_stage(stage.name, status="ok", seconds=seconds)
            return True
        state = collect(read_records(self.out))["stages"].get(stage.name, {})
        if state.get("status") == "error":  # the worker recorded its own exception
            self.record_stage(stage.name, status="error", seconds=seconds)
        else:
            how = f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"
            self.record_stage(
                stage.name,
                status="error",
                seconds=seconds,
                detail=f"the stage process died ({how}); see log.txt",
            )
        return False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def report_only(out: Path, append: bool) -> int:
    """The Markdown of an earlier run's ``rows.jsonl`` (the folder may be read-only)."""
    results = collect(read_records(out))
    if not results["meta"]:
        print(f"{out}: no rows.jsonl with a run in it", file=sys.stderr)
        return EXIT_STAGE_PROBLEM
    results["targets"] = evaluate_targets(results)
    text = render_markdown(results)
    print(text)
    if append:
        if results["meta"].get("dry_run"):
            print("not appended: a dry run measures nothing", file=sys.stderr)
            return EXIT_STAGE_PROBLEM
        from results import append_results

        append_results(text)
    return EXIT_OK


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Folder for results.json, results.md, rows.jsonl and log.txt.")
    parser.add_argument("--dry-run", action="store_true", help="Every stage at toy size on the CPU.")
    parser.add_argument(
        "--budget", type=float, default=480.0, help="Seconds for the whole run (default 480)."
    )
    parser.add_argument("--work-dir", help="Facesets, runs and exports (default: a new folder under /tmp).")
    parser.add_argument("--wheels", help="Install these *.whl (no index, no deps) for the stages first.")
    parser.add_argument("--stages", help=f"Comma-separated subset of: {','.join(STAGE_NAMES)}.")
    parser.add_argument(
        "--append-results", action="store_true", help="Append results.md to benchmarks/RESULTS.md."
    )
    parser.add_argument("--list", action="store_true", help="Print the stage plan and exit.")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Render --out's rows.jsonl again (e.g. files fetched from a GPU machine) and print it; "
        "with --append-results also append it to benchmarks/RESULTS.md.",
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)  # tests
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no subprocesses
    parser.add_argument("--worker", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--fail-stage", help=argparse.SUPPRESS)  # tests: this stage raises
    parser.add_argument("--hang-stage", help=argparse.SUPPRESS)  # tests: this stage hangs
    args = parser.parse_args(argv)
    if args.stages:
        unknown = set(args.stages.split(",")) - set(STAGE_NAMES)
        if unknown:
            parser.error(f"--stages: unknown {', '.join(sorted(unknown))}")
    if not args.list and not args.out:
        parser.error("--out is required")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        for stage in STAGES:
            extra = " (runs with what is left)" if stage.optional else ""
            print(f"{stage.name:15s} {stage.estimate:4.0f} s  {stage.title}{extra}")
        print(
            f"{'total':15s} {sum(s.estimate for s in STAGES if not s.optional):4.0f} s  + train_compile with the rest"
        )
        return 0
    if args.worker:
        return worker_main(args)
    if args.report_only:
        return report_only(Path(args.out), args.append_results)
    return Orchestrator(args, argv).run()


if __name__ == "__main__":
    sys.exit(main())
