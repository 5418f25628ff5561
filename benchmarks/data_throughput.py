"""Data-path throughput per CPU core: TorchSAE's backends next to a DeepFaceLab-style baseline.

Runs ``torchsae bench data`` (``pipelines.bench.measure``) at 128 and 256 for the DataLoader backend
and DALI's CPU mode, measures the DeepFaceLab-style per-sample path (``dfl_baseline.py``) on the same
files the same way (one core, samples per process-CPU second), and appends a table to
``benchmarks/RESULTS.md``. Targets (issue 3), per core against the baseline: host path ≥ 20× cheaper
and ≥ 60 % of the decode ceiling; complete CPU path ≥ 12× at 128 and ≥ 8× at 256.

    python benchmarks/data_throughput.py [--data-dir DIR] [--seconds 5] [--no-append]

Without ``--data-dir`` it renders the demo faceset (512² whole_face JPEGs with XSeg masks) first.

Side by side: the machine may be shared, so the baseline is measured before and after the backends
at each resolution and the ratios use the mean of the two runs (the table gives both). The
``resampling floor`` row times only the two bicubic resamplings every sample needs (target:
``warpAffine``, warped: ``remap``; OpenCV, float32, one core): no complete CPU path that resamples
with exact bicubic interpolation can be cheaper than host + this floor.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dfl_baseline import dfl_batch, load_record  # noqa: E402
from results import append_results  # noqa: E402

from pipelines.bench import machine_description, measure, run_timed  # noqa: E402
from pipelines.cpu_sampler import sample_maps  # noqa: E402
from pipelines.dali_loader import dali_available  # noqa: E402
from pipelines.index import ensure_index  # noqa: E402
from pipelines.warp import sample_warp_params  # noqa: E402

TARGETS = {128: {"host": 20.0, "full": 12.0}, 256: {"host": 20.0, "full": 8.0}}


def baseline(paths: list[str], resolution: int, batch_size: int, seconds: float) -> dict[str, float]:
    """Samples per CPU second of the DeepFaceLab-style path, with and without augmentation."""
    rng = np.random.default_rng(0)
    records = [load_record(p) for p in paths]  # DeepFaceLab reads metadata once, at start-up
    position = [0]

    def step(augment: bool) -> int:
        batch = [records[(position[0] + k) % len(records)] for k in range(batch_size)]
        position[0] += batch_size
        dfl_batch(batch, resolution, rng, augment)
        return batch_size

    full = run_timed(lambda: step(True), seconds)
    no_aug = run_timed(lambda: step(False), seconds)
    return {"full": full["per_cpu_s"], "no_augmentation": no_aug["per_cpu_s"]}


def resampling_floor(paths: list[str], resolution: int, batch_size: int, seconds: float) -> float:
    """Samples per CPU second of the two bicubic resamplings alone (target + warped), OpenCV float32."""
    from pipelines.decode import decode_bgr

    images = [
        decode_bgr(Path(p).read_bytes(), resolution).astype(np.float32) / 255 for p in paths[:batch_size]
    ]
    params = sample_warp_params(len(images), resolution, torch.Generator().manual_seed(0))
    maps = [sample_maps(params, i) for i in range(len(images))]
    size = (resolution, resolution)

    def step() -> int:
        for image, (inverse, warp_map) in zip(images, maps, strict=True):
            flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
            cv2.warpAffine(image, inverse, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
            cv2.remap(image, warp_map, None, cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
        return len(images)

    return run_timed(step, seconds)["per_cpu_s"]


def run(data_dir: Path, resolutions: list[int], seconds: float, batch_size: int) -> list[dict]:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rows = []
    for resolution in resolutions:
        index = ensure_index(data_dir, resolution, "xseg", progress=False)
        before = baseline(index.paths, resolution, batch_size, seconds)
        print(f"R={resolution} baseline (before): {before}", flush=True)
        results = []
        for backend in ("torch", "dali") if dali_available() else ("torch",):
            results.append(measure(data_dir, resolution, backend, seconds=seconds, batch_size=batch_size))
            print(json.dumps(results[-1]), flush=True)
        floor = resampling_floor(index.paths, resolution, batch_size, seconds)
        after = baseline(index.paths, resolution, batch_size, seconds)
        print(f"R={resolution} baseline (after): {after}; resampling floor {floor:.0f}/s", flush=True)
        base = {key: (before[key] + after[key]) / 2 for key in before}
        rows.append({"resolution": resolution, "baseline": base, "runs": (before, after)})
        for result in results:
            result["host_vs_baseline"] = result["host_samples_per_s_per_core"] / base["full"]
            result["full_vs_baseline"] = result["full_samples_per_s_per_core"] / base["full"]
            rows.append({"resolution": resolution, "path": result["backend"], "result": result})
        host = results[0]["host_samples_per_s_per_core"]
        bound = 1.0 / (1.0 / host + 1.0 / floor)
        rows.append(
            {"resolution": resolution, "floor": floor, "bound": bound, "bound_ratio": bound / base["full"]}
        )
    return rows


def table(rows: list[dict], command: str, files: int) -> str:
    """The Markdown section appended to RESULTS.md."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Data path throughput per CPU core ({stamp})",
        "",
        f"Machine: {machine_description()}, CPU only, load average {os.getloadavg()[0]:.1f} while measuring "
        f"(other jobs shared the machine). Command: `{command}`. Faceset: {files} demo faces "
        "(512² whole_face JPEG q90, XSeg masks). One sample = warped + target + full-face mask + eyes/mouth "
        "mask of one side. Rates are samples per process-CPU second on one core (process CPU time, not wall "
        "time, because other jobs share the cores; torch and OpenCV single-threaded; DALI with one worker "
        "thread, its executor threads charged too); page cache warm. The full CPU path augments with "
        "`pipelines.cpu_sampler` (OpenCV, exact bicubic images, bilinear masks).",
        "",
        "| R | path | decode ceiling /core | host /core | full CPU path /core | host ÷ baseline | "
        "full ÷ baseline | host % of ceiling | targets (host, full) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        res = row["resolution"]
        target = TARGETS.get(res, {"host": 20.0, "full": 8.0})
        if "baseline" in row:
            base, (before, after) = row["baseline"], row["runs"]
            lines.append(
                f"| {res} | DeepFaceLab-style baseline (per sample and per output, float32, full-size masks; "
                f"runs before / after: {before['full']:.0f} / {after['full']:.0f}) | – | "
                f"{base['no_augmentation']:.0f} (no augmentation) | {base['full']:.0f} | 1× | 1× | – | – |"
            )
            continue
        if "floor" in row:
            lines.append(
                f"| {res} | resampling floor: the two bicubic resamplings alone (OpenCV float32) | – | – | "
                f"{row['floor']:.0f} | – | ≤{row['bound_ratio']:.1f}× with the torch host path | – | – |"
            )
            continue
        r = row["result"]
        lines.append(
            f"| {res} | {r['backend']} | {r['decode_ceiling_per_core']:.0f} | {r['host_samples_per_s_per_core']:.0f} | "
            f"{r['full_samples_per_s_per_core']:.0f} | {r['host_vs_baseline']:.1f}× | {r['full_vs_baseline']:.1f}× | "
            f"{100 * r['host_fraction_of_ceiling']:.0f}% | ≥{target['host']:.0f}×, ≥{target['full']:.0f}× |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="a faceset folder (default: render the demo faceset)")
    parser.add_argument("--count", type=int, default=256, help="demo faces to render without --data-dir")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--no-append", action="store_true", help="print the table, do not touch RESULTS.md")
    args = parser.parse_args()
    data_dir = args.data_dir
    if data_dir is None:
        from torchsae.demo.faceset import make_demo_faceset

        root = Path(tempfile.gettempdir()) / "torchsae_bench_demo"
        make_demo_faceset(root, args.count, seed=1, truth_count=0, workers=2)
        data_dir = root / "A"
    rows = run(data_dir, args.resolutions, args.seconds, args.batch_size)
    files = len(ensure_index(data_dir, args.resolutions[0], "xseg", progress=False))
    section = table(rows, "python benchmarks/data_throughput.py " + " ".join(sys.argv[1:]), files)
    print(section)
    if not args.no_append:
        append_results(section)


if __name__ == "__main__":
    main()
