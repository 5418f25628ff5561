"""torchsae swap / merge: geometry against the demo frames' truth, resume, bad inputs, ONNX/.dfm, video."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_train_support import tiny_config

from torchsae.cli import main
from torchsae.demo import identity_for, make_demo_faceset, render_face
from torchsae.demo.params import Scene
from torchsae.dfl.meta import load_meta, save_meta
from torchsae.merge import MergeOptions
from torchsae.merge.blend import process_mask
from torchsae.merge.model import SwapOutput, Swapper, load_swapper
from torchsae.merge.run import merge_frames, swap_faces

FRAMES = 6  # frame 3 (index 2) holds two faces, frame 6 (index 5) none


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_demo")
    return make_demo_faceset(root / "fs", 8, seed=0, truth_count=0, frames=FRAMES)


@pytest.fixture(scope="session")
def checkpoint(demo, tmp_path_factory):
    from torchsae.train.checkpoint import find_last_checkpoint
    from torchsae.train.trainer import train

    run = tmp_path_factory.mktemp("merge_run")
    cfg = tiny_config(run, demo.dirs, steps=6)
    train(cfg)
    return find_last_checkpoint(run)


def _truth_a_mask(demo, item) -> np.ndarray:
    """Identity A's face mask placed into the frame from the manifest (independent of the merger)."""
    width, height = json.loads((demo.frames_truth_dir / "manifest.json").read_text())["frame_size"]
    out = np.zeros((height, width), np.float32)
    for face in item["faces"]:
        mask = render_face(identity_for("A"), Scene(**face["scene"])).mask.astype(np.float32)
        placed = cv2.warpAffine(mask, np.array(face["placement"]), (width, height), flags=cv2.INTER_LINEAR)
        out = np.maximum(out, placed)
    return out > 0.5


def test_merge_keeps_outside_and_lands_on_the_truth(demo, checkpoint, tmp_path):
    out, masks = tmp_path / "merged", tmp_path / "masks"
    swapper = load_swapper(checkpoint, device="cpu")
    report = merge_frames(
        swapper,
        demo.frames_dir,
        demo.frames_aligned_dir,
        out,
        MergeOptions(mask_mode="xseg-dst"),
        batch_size=4,
        workers=2,
        progress=False,
        masks_dir=masks,
    )
    assert (report.merged, report.copied, report.faces, report.frames) == (5, 1, 6, FRAMES)
    assert not report.skipped
    manifest = json.loads((demo.frames_truth_dir / "manifest.json").read_text())
    errors = []
    for item in manifest["items"]:
        src = demo.frames_dir / item["frame"]
        merged_path = out / item["frame"]
        if not item["faces"]:  # copied byte for byte
            assert merged_path.read_bytes() == src.read_bytes()
            continue
        source, merged = cv2.imread(str(src)), cv2.imread(str(merged_path))
        assert merged.shape == source.shape
        mask = cv2.imread(str(masks / item["frame"]), cv2.IMREAD_GRAYSCALE)
        outside = mask == 0
        assert np.array_equal(merged[outside], source[outside]), item["frame"]
        assert (merged[~outside] != source[~outside]).any()
        pasted, truth = mask >= 128, _truth_a_mask(demo, item)
        iou = (pasted & truth).sum() / (pasted | truth).sum()
        yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
        centre = [np.array([(xx * m).sum(), (yy * m).sum()]) / m.sum() for m in (pasted, truth)]
        errors.append(float(np.linalg.norm(centre[0] - centre[1])))
        assert iou > 0.85, (item["frame"], iou)
    # the 32-px model crop spans ~5 frame pixels per crop pixel; the paste must land within ~1 px
    assert max(errors) < 1.5, errors


class EchoSwapper(Swapper):
    """Returns its input with all-ones masks: a merge with it must give the source frame back."""

    def __init__(self, resolution: int = 96) -> None:
        self.resolution, self.face_type, self.description = resolution, "wf", "echo"

    def __call__(self, faces: np.ndarray) -> SwapOutput:
        ones = np.ones((*faces.shape[:3], 1), np.float32)
        return SwapOutput(faces.copy(), ones, ones)


@pytest.mark.parametrize("mode", ["overlay", "seamless"])
def test_echo_merge_round_trips_the_frame(demo, tmp_path, mode):
    out = tmp_path / "merged"
    options = MergeOptions(
        mode=mode, mask_mode="learned-prd", color_transfer_mode="none", blur_mask_modifier=8
    )
    report = merge_frames(
        EchoSwapper(), demo.frames_dir, demo.frames_aligned_dir, out, options, progress=False
    )
    assert report.faces == 6 and report.seamless_fallbacks <= 1
    for name in ("00001.png", "00003.png"):
        a = cv2.imread(str(demo.frames_dir / name)).astype(np.float64)
        b = cv2.imread(str(out / name)).astype(np.float64)
        psnr = 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))
        assert psnr > 30.0, (name, mode, psnr)


def test_mask_erode_blur_match_deepfacelab_rules():
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    assert np.array_equal(process_mask(mask, 0, 0), mask)
    eroded = process_mask(mask, 5, 0)
    assert eroded.sum() < mask.sum() and eroded[32, 32] == 1.0
    dilated = process_mask(mask, -5, 0)
    assert dilated.sum() > mask.sum()
    blurred = process_mask(np.ones((64, 64), np.float32), 0, 10)
    # zeroed half a blur inside the crop's edge, then blurred: fades to ~0 at the edge
    assert blurred[0].max() < 0.02 and blurred[:, 32].argmax() >= 10 and blurred[32, 32] > 0.99


def test_merge_resumes_and_overwrites(demo, tmp_path):
    out = tmp_path / "merged"
    options = MergeOptions(color_transfer_mode="none")
    merge_frames(EchoSwapper(32), demo.frames_dir, demo.frames_aligned_dir, out, options, progress=False)
    (out / "00002.png").unlink()
    again = merge_frames(
        EchoSwapper(32), demo.frames_dir, demo.frames_aligned_dir, out, options, progress=False
    )
    assert (again.existing, again.merged, again.copied) == (FRAMES - 1, 1, 0)
    redo = merge_frames(
        EchoSwapper(32),
        demo.frames_dir,
        demo.frames_aligned_dir,
        out,
        options,
        progress=False,
        overwrite=True,
    )
    assert (redo.existing, redo.merged + redo.copied) == (0, FRAMES)


def test_bad_faces_are_skipped_and_counted(demo, tmp_path):
    faces = tmp_path / "aligned"
    shutil.copytree(demo.frames_aligned_dir, faces)
    shutil.copy(faces / "00001_0.jpg", faces / "90000_0.jpg")
    meta = load_meta(faces / "90000_0.jpg")
    meta.source_filename = "99999.png"  # no such frame
    save_meta(faces / "90000_0.jpg", meta)
    meta = load_meta(faces / "00002_0.jpg")
    meta.image_to_face_mat = np.zeros((2, 3))  # singular
    save_meta(faces / "00002_0.jpg", meta)
    (faces / "00004_0.jpg").write_bytes(b"not a jpeg")
    report = merge_frames(
        EchoSwapper(32), demo.frames_dir, faces, tmp_path / "merged", MergeOptions(), progress=False
    )
    assert report.skipped == {
        "whose frame is missing": 1,
        "with a missing or singular image_to_face_mat": 1,
        "unreadable": 1,
    }
    assert report.merged + report.copied == FRAMES  # frames of skipped faces are copied unchanged
    assert "skipped faces" in report.summary()


def test_cli_one_line_errors(demo, checkpoint, tmp_path):
    args = ["--faces", str(demo.frames_aligned_dir), "--output", str(tmp_path / "o"), "--no-progress"]
    result = CliRunner().invoke(main, ["swap", "--model", str(checkpoint), "--model-size", "64", *args])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error:") and "resolution is 32" in result.output
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"nope")
    result = CliRunner().invoke(main, ["swap", "--model", str(bogus), *args])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output


def test_swap_cli_png_and_dfl(demo, checkpoint, tmp_path):
    faces = tmp_path / "aligned"
    shutil.copytree(demo.dirs[0], faces)
    (faces / "zzz_broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "swapped"
    result = CliRunner().invoke(
        main,
        ["swap", "--model", str(checkpoint), "--faces", str(faces), "--output", str(out), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "swapped 8 faces" in result.output and "1 unreadable" in result.output
    image = cv2.imread(str(out / "00000.png"))
    assert image.shape == (32, 32, 3)
    assert cv2.imread(str(out / "swap_mask" / "00000.png"), cv2.IMREAD_GRAYSCALE).shape == (32, 32)
    assert (out / "face_mask" / "00007.png").is_file()
    dfl = tmp_path / "swapped_dfl"
    report = swap_faces(load_swapper(checkpoint), demo.dirs[0], dfl, fmt="dfl", progress=False)
    assert report.written == 8
    meta, original = load_meta(dfl / "00000.jpg"), load_meta(demo.dirs[0] / "00000.jpg")
    assert meta.image_hw == original.image_hw
    assert meta.source_filename == original.source_filename
    np.testing.assert_array_equal(meta.landmarks, original.landmarks)


def _rename_io(src: Path, dst: Path, suffix: str) -> None:
    """The .dfm with DeepFaceLab's tf2onnx names (``in_face:0`` ...), as issue 13 will export it."""
    import onnx

    model = onnx.load(str(src))
    renames = {v.name: v.name + suffix for v in [*model.graph.input, *model.graph.output]}
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames[value.name]
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.save(model, str(dst))


def test_onnx_and_dfm_match_the_checkpoint(checkpoint, demo, tmp_path):
    pytest.importorskip("onnxruntime")
    from torchsae.export.onnx import export_onnx
    from torchsae.export.source import load_model_for_export

    model, cfg, step = load_model_for_export(checkpoint)
    export_onnx(model, tmp_path / "m.onnx", cfg.model, step=step)
    export_onnx(model, tmp_path / "plain.dfm", cfg.model, layout="dfm", step=step)
    _rename_io(tmp_path / "plain.dfm", tmp_path / "m.dfm", ":0")
    faces = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    ref = load_swapper(checkpoint, device="cpu")(faces)
    for name in ("m.onnx", "plain.dfm", "m.dfm"):
        swapper = load_swapper(tmp_path / name, device="cpu")
        assert swapper.resolution == 32 and swapper.face_type == "wf"
        got = swapper(faces)
        for key in ("face", "swap_mask", "face_mask"):
            np.testing.assert_allclose(
                getattr(got, key), getattr(ref, key), atol=1e-4, err_msg=f"{name} {key}"
            )
    report = merge_frames(
        load_swapper(tmp_path / "m.dfm"),
        demo.frames_dir,
        demo.frames_aligned_dir,
        tmp_path / "merged",
        progress=False,
    )
    assert report.faces == 6


def test_video_in_and_out_with_audio(demo, tmp_path):
    ffmpeg = pytest.importorskip("imageio_ffmpeg")
    from torchsae.merge.run import frames_to_video
    from torchsae.merge.video import probe

    silent = frames_to_video(demo.frames_dir, tmp_path / "silent.mp4", fps=12.0)
    source = tmp_path / "source.mp4"
    subprocess.run(
        [
            ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-i",
            str(silent),
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            "-c:v",
            "copy",
            "-c:a",
            "aac",
            "-shortest",
            str(source),
        ],
        check=True,
    )
    info = probe(source)
    assert info.has_audio and abs(info.fps - 12.0) < 1e-6
    out = tmp_path / "merged"
    report = merge_frames(
        EchoSwapper(32),
        source,
        demo.frames_aligned_dir,
        out,
        MergeOptions(color_transfer_mode="none"),
        progress=False,
        to_video=tmp_path / "out.mp4",
    )
    assert report.frames == FRAMES and report.faces == 6 and not report.skipped
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(1, FRAMES + 1)]
    result = probe(tmp_path / "out.mp4", count_frames=True)
    assert result.has_audio and abs(result.fps - 12.0) < 1e-6 and result.size == (480, 320)
    assert result.frames == FRAMES


def test_masked_rct_takes_statistics_inside_the_mask():
    import torch

    from pipelines.color import rct
    from pipelines.colorspace import bgr_to_lab

    gen = torch.Generator().manual_seed(0)
    image, ref = torch.rand(2, 3, 16, 16, generator=gen), torch.rand(2, 3, 16, 16, generator=gen) * 0.5
    ones = torch.ones(2, 1, 16, 16)
    torch.testing.assert_close(rct(image, ref, ones), rct(image, ref))
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    ref = ref * mask + (1 - mask)  # white outside the mask must not move the statistics
    out = bgr_to_lab(rct(image, ref, mask))
    inside = mask.bool().expand(-1, 3, -1, -1)
    got = out[inside].view(2, 3, -1).mean(-1)
    want = bgr_to_lab(ref)[inside].view(2, 3, -1).mean(-1)
    torch.testing.assert_close(got, want, atol=2.0, rtol=0)  # clipping to [0, 1] moves it a little
    unmasked = bgr_to_lab(rct(image, ref))[inside].view(2, 3, -1).mean(-1)
    assert (unmasked - want).abs().max() > 10.0


def test_frames_are_added_to_an_existing_demo_faceset(tmp_path):
    first = make_demo_faceset(tmp_path / "fs", 2, seed=0, truth_count=1)
    before = (first.dirs[0] / "00000.jpg").stat().st_mtime_ns
    again = make_demo_faceset(tmp_path / "fs", 2, seed=0, truth_count=1, frames=2)
    assert (again.dirs[0] / "00000.jpg").stat().st_mtime_ns == before  # the faces were kept
    assert sorted(p.name for p in again.frames_dir.iterdir()) == ["00001.png", "00002.png"]
    assert make_demo_faceset(tmp_path / "fs", 2, seed=0, truth_count=1, frames=2).seconds == 0.0
    fewer = make_demo_faceset(tmp_path / "fs", 2, seed=0, truth_count=1, frames=1)
    assert sorted(p.name for p in fewer.frames_dir.iterdir()) == ["00001.png"]


@pytest.mark.parametrize("ct", ["lct", "mkl", "idt", "sot"])
def test_every_colour_transfer_mode_merges(demo, tmp_path, ct):
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(demo.frames_dir / "00001.png", frames)
    report = merge_frames(
        EchoSwapper(32),
        frames,
        demo.frames_aligned_dir,
        tmp_path / "out",
        MergeOptions(color_transfer_mode=ct, blur_mask_modifier=4),
        progress=False,
    )
    assert report.faces == 1 and report.skipped == {"whose frame is missing": 5}


def test_jpeg_frames_keep_name_size_and_format(demo, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("00001", "00006"):  # a face, and no face
        image = cv2.imread(str(demo.frames_dir / f"{name}.png"))
        cv2.imwrite(str(frames / f"{name}.jpg"), image)
    out = tmp_path / "out"
    report = merge_frames(
        EchoSwapper(32),
        frames,
        demo.frames_aligned_dir,
        out,
        MergeOptions(output_face_scale=10),
        progress=False,
    )
    assert (report.merged, report.copied) == (1, 1)  # 00001.png in the metadata matches 00001.jpg
    assert sorted(p.name for p in out.iterdir()) == ["00001.jpg", "00006.jpg"]
    assert (out / "00001.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert cv2.imread(str(out / "00001.jpg")).shape == (320, 480, 3)
    assert (out / "00006.jpg").read_bytes() == (frames / "00006.jpg").read_bytes()


def test_merge_cli(demo, checkpoint, tmp_path):
    out = tmp_path / "merged"
    args = [
        "merge",
        "--model",
        str(checkpoint),
        "--frames",
        str(demo.frames_dir),
        "--faces",
        str(demo.frames_aligned_dir),
        "--output",
        str(out),
        "--mode",
        "seamless",
        "--mask-mode",
        "xseg-dst",
        "--erode-mask-modifier",
        "2",
        "--blur-mask-modifier",
        "6",
        "--output-face-scale",
        "-5",
        "--masks",
        str(tmp_path / "masks"),
        "--no-progress",
        "--batch-size",
        "3",
        "--workers",
        "1",
    ]
    if shutil.which("ffmpeg") or _has_imageio_ffmpeg():
        args += ["--to-video", str(tmp_path / "out.mp4"), "--fps", "10"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "merged 5 frames (6 faces), copied 1 without faces" in result.output
    assert len(list(out.iterdir())) == FRAMES == len(list((tmp_path / "masks").iterdir()))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and f"{FRAMES} already merged" in again.output
    (tmp_path / "empty").mkdir()
    empty = [*args[:4], str(tmp_path / "empty"), *args[5:]]
    assert args[3] == "--frames"
    result = CliRunner().invoke(main, empty)
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("Error:")
    assert "no frames" in result.output


def _has_imageio_ffmpeg() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def test_progress_is_whole_lines_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker logs / nohup / SLURM read plain lines, not one long carriage-return line."""
    import io
    import sys

    from torchsae.merge import run as merge_run

    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    bar = merge_run._progress(3, "frame", True)
    for _ in range(3):
        bar.update(1)
    bar.close()
    text = captured.getvalue()
    assert "\r" not in text and text.endswith("\n") and "3/3" in text.splitlines()[-1]
