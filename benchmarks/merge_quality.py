"""Merge quality: merged demo frames against truth frames, per blend and mask mode, and frames/s.

Takes a trained checkpoint (``--model``, e.g. ``demo_run/models/last.pth`` after ``make demo``) or,
without one, trains the demo model first (``torchsae.demo.run.run_demo``, ``--steps``). Then renders
``--frames`` demo frames (faces placed, scaled and rotated into scenes; truth = the same scenes with
identity B), runs ``torchsae merge`` once per setting and scores each against the truth frames: PSNR
and SSIM inside the mask where both renders are face, next to the frames left as they were (A's own
face). Frames/s is the whole merge loop (decode, crop, swap, colour transfer, paste, PNG write).

    python benchmarks/merge_quality.py [--model CKPT | --steps 300] [--frames 24] [--no-append]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from results import append_results  # noqa: E402

from pipelines.bench import machine_description  # noqa: E402
from torchsae.demo.faceset import make_demo_faceset  # noqa: E402
from torchsae.demo.score import merged_frames_score  # noqa: E402
from torchsae.merge import MergeOptions  # noqa: E402
from torchsae.merge.model import load_swapper  # noqa: E402
from torchsae.merge.run import merge_frames  # noqa: E402


def settings(resolution: int) -> dict[str, MergeOptions]:
    blur = max(1, resolution // 16)
    return {
        "overlay, DeepFaceLab defaults (learned-prd*learned-dst, rct, no erode/blur)": MergeOptions(),
        f"overlay, blur {blur}": MergeOptions(blur_mask_modifier=blur),
        f"overlay, xseg-dst, blur {blur}": MergeOptions(mask_mode="xseg-dst", blur_mask_modifier=blur),
        f"overlay, blur {blur}, no colour transfer": MergeOptions(
            blur_mask_modifier=blur, color_transfer_mode="none"
        ),
        f"seamless, blur {blur}": MergeOptions(mode="seamless", blur_mask_modifier=blur),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint, .onnx or .dfm to merge with")
    parser.add_argument("--steps", type=int, default=300, help="demo training steps when no --model")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-append", action="store_true", help="print the table, do not write RESULTS.md")
    args = parser.parse_args()
    command = ("python benchmarks/merge_quality.py " + " ".join(sys.argv[1:])).strip()
    with tempfile.TemporaryDirectory(prefix="merge_quality_") as tmp:
        tmp = Path(tmp)
        model = args.model
        trained = ""
        if model is None:
            from torchsae.demo.run import run_demo

            summary = run_demo(out=tmp / "run", steps=args.steps)
            model = tmp / "run" / "models" / "last.pth"
            trained = f" (the demo model trained for {summary['steps']} steps in this run)"
        faceset = make_demo_faceset(
            tmp / "fs", 1, seed=args.seed, truth_count=0, frames=args.frames, workers=2
        )
        swapper = load_swapper(model)
        rows = [
            (
                "frames as they were (no merge)",
                merged_frames_score(faceset.frames_dir, faceset.frames_truth_dir),
                None,
            )
        ]
        for label, options in settings(swapper.resolution).items():
            report = merge_frames(
                swapper,
                faceset.frames_dir,
                faceset.frames_aligned_dir,
                tmp / label.replace(" ", "_"),
                options,
                batch_size=args.batch_size,
                progress=False,
            )
            rows.append(
                (label, merged_frames_score(tmp / label.replace(" ", "_"), faceset.frames_truth_dir), report)
            )
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Merge quality and speed (demo frames, {when})",
        "",
        f"Machine: {machine_description()}, model on {swapper.device}, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.1f} while measuring. Command: `{command}`. Model: "
        f"{swapper.description}{trained}. {args.frames} demo frames of 480×320 (seed {args.seed}; one face, "
        "two faces in every sixth, none in every sixth), each face placed, scaled (0.3–0.55) and rotated "
        "(±20°). Score: merged frame against the same scene rendered as B, inside the mask where both "
        "renders are face; PSNR per frame averaged, SSIM (11-tap Gaussian, σ 1.5) over masked positions. "
        "frames/s: the whole `torchsae merge` loop, PNG writes included.",
        "",
        "| setting | PSNR (dB, masked) | SSIM (masked) | frames/s |",
        "|---|---|---|---|",
    ]
    for label, score, report in rows:
        fps = "" if report is None else f"{report.frames_per_second:.1f}"
        lines.append(f"| {label} | {score.psnr:.2f} | {score.ssim:.4f} | {fps} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_append:
        append_results(section)


if __name__ == "__main__":
    main()
