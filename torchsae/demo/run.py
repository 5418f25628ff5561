"""The end-to-end demo behind ``make demo`` / ``torchsae demo``: faceset -> training -> export -> score
-> merge (the swap pasted back into full frames, and a short video when imageio-ffmpeg is installed).

What it shows on a laptop CPU in a few minutes: the real pipeline (DeepFaceLab-format JPEGs with XSeg
masks, the side index, DeepFaceLab's augmentation), the real trainer (checkpoints, previews, resume),
the ONNX export verified with ONNX Runtime, and a number that says whether the swap learnt anything:
PSNR/SSIM of the A→B swap against held-out ground truth, next to the untrained model's.

The model is deliberately small (``DEMO_MODEL``) so that a few thousand samples per minute fit on two
cores; the architecture and losses are the full SAEHD ones. Re-running the same command resumes the
run folder's checkpoint and only trains the missing steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from torchsae.config import Config, ModelConfig
from torchsae.demo.faceset import make_demo_faceset
from torchsae.demo.score import (
    SwapScore,
    format_scores,
    merged_frames_score,
    no_swap_score,
    swap_score,
)
from torchsae.export.source import load_model_for_export
from torchsae.fileio import atomic_write_text
from torchsae.models.registry import build_model
from torchsae.train.checkpoint import find_last_checkpoint
from torchsae.train.trainer import train

# Small dims for a CPU: the DF/LIAE structure is unchanged, only widths shrink (ae 256 -> 32, e/d 64 -> 16).
DEMO_MODEL = {
    "archi": "liae-ud",
    "face_type": "wf",
    "ae_dims": 32,
    "e_dims": 16,
    "d_dims": 16,
    "d_mask_dims": 8,
}
DEMO_BATCH = 8
DEMO_FRAMES = 12  # full frames (two with two faces, two without) merged at the end, and a short video
DEMO_FPS = 6.0


def demo_config(run_dir: Path, faceset_root: Path, steps: int, seed: int, resolution: int) -> Config:
    """The demo's training config: a small model, DeepFaceLab's default options, frequent previews."""
    cfg = Config()
    cfg.model = ModelConfig(resolution=resolution, **DEMO_MODEL)
    cfg.data.data_dir_a = str(faceset_root / "A")
    cfg.data.data_dir_b = str(faceset_root / "B")
    cfg.data.backend = "torch"
    cfg.data.workers = 0  # decoding in-process: two cores are busy with the model already
    cfg.optim.lr = 2e-4  # the small model tolerates a larger step; the demo must learn in minutes
    cfg.train.batch_size = DEMO_BATCH
    cfg.train.max_steps = steps
    cfg.train.preview_interval = max(1, steps // 8)
    cfg.train.save_interval = max(1, steps // 4)
    cfg.train.log_interval = max(1, min(25, steps // 20))
    cfg.train.keep = 2
    cfg.train.seed = seed
    cfg.train.run_dir = str(run_dir)
    cfg.train.device = "cpu"
    return cfg.validate()


def untrained_model(cfg: Config) -> nn.Module:
    """The model exactly as the trainer initialises it at step 0 (same seed, same init order)."""
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model)


def export_if_available(model: nn.Module, config: Config, step: int, output: Path) -> str:
    """Export the trained swap to ONNX with the export helper when this install has it."""
    try:
        from torchsae.export.onnx import export_onnx
    except ImportError as exc:
        return f"skipped ONNX export: torchsae.export is not available ({exc})"
    result = export_onnx(model, output, config.model, step=step)
    return f"exported {result.path} ({result.size_bytes / 2**20:.1f} MiB), verified with ONNX Runtime"


def merge_demo_frames(checkpoint: Path, faceset, out: Path) -> dict:
    """``torchsae merge`` on the demo frames: ``out/merged/`` (+ ``out/merged.mp4`` with imageio-ffmpeg),
    scored against the truth frames inside the face mask."""
    from torchsae.merge import MergeOptions
    from torchsae.merge.model import load_swapper
    from torchsae.merge.run import merge_frames

    try:
        import imageio_ffmpeg  # noqa: F401

        video = out / "merged.mp4"
    except ImportError:
        video = None
    swapper = load_swapper(checkpoint, device="cpu")
    # DeepFaceLab's defaults, plus a blurred edge of 1/16 of the face crop
    options = MergeOptions(blur_mask_modifier=max(1, swapper.resolution // 16))
    report = merge_frames(
        swapper,
        faceset.frames_dir,
        faceset.frames_aligned_dir,
        out / "merged",
        options,
        batch_size=DEMO_BATCH,
        overwrite=True,
        to_video=video,
        fps=DEMO_FPS,
        progress=False,
    )
    merged = merged_frames_score(out / "merged", faceset.frames_truth_dir)
    untouched = merged_frames_score(faceset.frames_dir, faceset.frames_truth_dir)
    summary = f"{report.summary()}; vs truth frames: {merged} (frames as they were: {untouched})"
    if video is None:
        summary += "; no video (pip install 'torchsae[video]')"
    return {
        "frames": report.frames,
        "faces": report.faces,
        "frames_per_second": round(report.frames_per_second, 2),
        "psnr": merged.psnr,
        "ssim": merged.ssim,
        "unmerged_psnr": untouched.psnr,
        "unmerged_ssim": untouched.ssim,
        "video": None if video is None else str(video),
        "summary": summary,
    }


def run_demo(out: Path, count: int = 256, steps: int = 300, seed: int = 0, resolution: int = 128) -> dict:
    """Make the faceset, train, export and score; print a summary and write ``out/score.json``.

    The defaults fit the README's "a few minutes on a laptop CPU": measured on 2 otherwise idle
    cores, the whole demo at 128 px (300 steps of batch 8) takes about 3.5 minutes and lifts the
    masked swap PSNR from 14.3 dB (untrained) to 19.9 dB (SSIM 0.49 -> 0.62).
    """
    out = Path(out)
    start = time.perf_counter()
    faceset_root = out / "faceset"
    print(f"[1/5] synthetic faceset: {count} faces per side, {DEMO_FRAMES} frames in {faceset_root}")
    faceset = make_demo_faceset(
        faceset_root, count, seed=seed, workers=max(1, os.cpu_count() or 1), frames=DEMO_FRAMES
    )
    cfg = demo_config(out, faceset_root, steps, seed, resolution)

    print(f"[2/5] training {cfg.model.archi} {resolution}px for {steps} steps on the CPU (run folder {out})")
    before = swap_score(untrained_model(cfg), faceset.truth_dir)
    resume = find_last_checkpoint(out)
    train_start = time.perf_counter()
    result = train(cfg, resume=resume)
    train_seconds = time.perf_counter() - train_start
    if result.stopped_by_signal:
        print(f"stopped at step {result.step} and saved; run the same command again to continue")
        raise SystemExit(0)
    checkpoint = find_last_checkpoint(out)
    model, model_cfg, step = load_model_for_export(checkpoint)

    print("[3/5] export")
    onnx_note = export_if_available(model, model_cfg, step, out / "models" / "swap.onnx")
    print(f"      {onnx_note}")

    print("[4/5] swap score against the held-out truth pairs")
    after = swap_score(model, faceset.truth_dir)
    floor = no_swap_score(faceset.truth_dir, resolution)
    rows: dict[str, SwapScore] = {
        "no swap (A's own face)": floor,
        "untrained model (step 0)": before,
        f"trained model (step {step})": after,
    }
    print(format_scores(rows))
    print("[5/5] merge: the swap pasted back into full frames")
    merge = merge_demo_frames(checkpoint, faceset, out)
    print(f"      {merge['summary']}")
    summary = {
        "steps": step,
        "resolution": resolution,
        "model": dict(DEMO_MODEL),
        "batch_size": DEMO_BATCH,
        "lr": cfg.optim.lr,
        "count": count,
        "seed": seed,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "skipped_steps": result.skipped_steps,
        "scores": {label: {"psnr": s.psnr, "ssim": s.ssim, "pairs": s.samples} for label, s in rows.items()},
        "export": onnx_note,
        "merge": merge,
    }
    atomic_write_text(out / "score.json", json.dumps(summary, indent=2))
    print(f"merged frames: {out / 'merged'}" + (f"   video: {merge['video']}" if merge["video"] else ""))
    print(
        f"previews: {out / 'logs' / 'previews'}   checkpoints: {out / 'models'}   scores: {out / 'score.json'}"
    )
    print(f"done in {summary['total_seconds']:.0f} s")
    return summary
