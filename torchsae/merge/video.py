"""Frames in and video out through imageio-ffmpeg (a maintained package that ships an ffmpeg binary).

Why imageio-ffmpeg: it needs no system ffmpeg, pipes raw frames both ways (no temporary PNGs for a
video input) and reports the frame rate and audio stream of a file. It is the optional ``video`` extra
(``pip install 'torchsae[video]'``); frame folders need none of this.

Frames read from a video are named as DeepFaceLab's ``extract video`` names them: ``00001.png`` … (the
aligned faces' ``source_filename`` refers to those names).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchsae import fileio
from torchsae.errors import TorchSAEError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".wmv", ".flv", ".mpg", ".mpeg")


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise TorchSAEError(
            "reading or writing video needs imageio-ffmpeg: pip install 'torchsae[video]'"
        ) from exc
    return imageio_ffmpeg


def video_frame_name(index: int) -> str:
    """DeepFaceLab's name for the ``index``-th (0-based) frame extracted from a video."""
    return f"{index + 1:05d}.png"


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    size: tuple[int, int]  # (width, height)
    has_audio: bool
    frames: int | None


def probe(path: str | Path, count_frames: bool = False) -> VideoInfo:
    """Frame rate, size and whether ``path`` has an audio stream (one-line error when unreadable).

    ``frames``: counted by decoding with ``count_frames`` (exact, slow on long videos), else estimated
    from the duration and frame rate (None when the file does not say).
    """
    ffmpeg = _ffmpeg()
    path = Path(path)
    if not path.is_file():
        raise TorchSAEError(f"{path}: video not found")
    gen = ffmpeg.read_frames(str(path), pix_fmt="bgr24")
    try:
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as exc:
        raise TorchSAEError(f"{path}: ffmpeg cannot read it as a video ({str(exc).splitlines()[0]})") from exc
    finally:
        gen.close()
    fps = float(meta.get("fps") or 25.0)
    frames = int(round(meta["duration"] * fps)) if meta.get("duration") else None
    if count_frames:
        try:
            frames = ffmpeg.count_frames_and_secs(str(path))[0]
        except (RuntimeError, OSError):
            frames = None
    return VideoInfo(fps, tuple(meta["size"]), "audio_codec" in meta, frames)


def read_video(path: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(DeepFaceLab frame name, uint8 BGR (H, W, 3)) for every frame of a video."""
    ffmpeg = _ffmpeg()
    gen = ffmpeg.read_frames(str(path), pix_fmt="bgr24")
    try:
        meta = next(gen)
        width, height = meta["size"]
        for index, raw in enumerate(gen):
            frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            yield video_frame_name(index), frame
    finally:
        gen.close()


def write_video(
    frames: Iterator[np.ndarray],
    output: str | Path,
    size: tuple[int, int],
    fps: float,
    audio_from: str | Path | None = None,
    quality: float = 8.0,
) -> Path:
    """Encode uint8 BGR frames of ``size`` (w, h) to ``output`` (H.264, yuv420p) at ``fps``.

    With ``audio_from`` (a video that has an audio stream) its first audio stream is copied. The file
    is written under a temporary name beside ``output`` and renamed when complete.
    """
    ffmpeg = _ffmpeg()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    width, height = size
    # yuv420p needs even sides: pad by one pixel (edge copy) rather than let ffmpeg rescale
    pad_w, pad_h = width % 2, height % 2
    writer = ffmpeg.write_frames(
        str(tmp),
        (width + pad_w, height + pad_h),
        pix_fmt_in="bgr24",
        fps=fps,
        codec="libx264",
        quality=quality,
        macro_block_size=1,
        ffmpeg_log_level="error",
        audio_path=None if audio_from is None else str(audio_from),
        audio_codec=None if audio_from is None else "aac",
    )
    try:
        writer.send(None)
        for frame in frames:
            if frame.shape[:2] != (height, width):
                raise TorchSAEError(
                    f"{output}: a frame of size {frame.shape[1]}x{frame.shape[0]}, the video is {width}x{height}"
                )
            if pad_w or pad_h:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    fileio.replace(tmp, output)
    return output
