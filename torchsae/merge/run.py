"""``torchsae swap`` and ``torchsae merge``: the batched loops around the swapper and the blender.

Work is split the way the hardware wants it: frames (or faces) are decoded and cropped by a pool of
worker threads (OpenCV and libjpeg release the GIL), the crops are swapped in batches on the model's
device and colour-transferred there in one batched call (``pipelines.color``), and the pasting,
encoding and writing of finished frames goes back to the worker threads. A bounded look-ahead keeps
memory flat on long videos. Output files are written atomically (``torchsae.fileio``) and keep their
source frame's name, so a rerun skips frames that already exist (``overwrite`` redoes them).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from torchsae import fileio
from torchsae.dfl.masks import face_masks_at
from torchsae.dfl.meta import load_meta, meta_into_bytes
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_write_bytes
from torchsae.merge.blend import MergeOptions, choose_mask, paste_face, process_mask
from torchsae.merge.faces import (
    AlignedFace,
    file_to_model_mat,
    frame_to_model_mat,
    list_images,
    scale_about_centre,
    scan_faces,
)
from torchsae.merge.model import SwapOutput, Swapper

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
JPEG_QUALITY = 95


def default_workers() -> int:
    from torchsae.export.verify import cpu_cores

    return max(1, min(8, cpu_cores()))


class _LineStream:
    """tqdm's status as whole lines (a log file, docker logs, SLURM): ``\r``-rewrites become new lines."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _progress(total: int, unit: str, enabled: bool):
    """A bar with frames/s and ETA on a terminal; one plain line every 30 s otherwise (the trainer's
    ``--progress auto`` rule, ``TORCHSAE_NO_PROGRESS=1`` included)."""
    from tqdm import tqdm

    from torchsae.train.report import resolve_progress

    bar = resolve_progress("auto", sys.stderr) == "bar"
    return tqdm(
        total=total,
        unit=unit,
        dynamic_ncols=bar,
        ncols=None if bar else 100,
        mininterval=0.1 if bar else 30.0,
        file=sys.stderr if bar else _LineStream(sys.stderr),
        disable=not enabled,
    )


def encode_image(image: np.ndarray, suffix: str, source: str) -> bytes:
    """``cv2.imencode`` for ``suffix`` (JPEG at quality 95); a one-line error when OpenCV refuses."""
    params = [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, image, params)
    if not ok:
        raise TorchSAEError(f"{source}: OpenCV cannot encode a {suffix} image")
    return buf.tobytes()


def read_image(path: Path) -> np.ndarray | None:
    """uint8 BGR (H, W, 3), or None when the file cannot be read or decoded."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def _swap_batch(swapper: Swapper, faces: list[np.ndarray]) -> SwapOutput:
    return swapper(np.stack(faces).astype(np.float32) / 255.0)


def _color_transfer(
    mode: str, faces: np.ndarray, refs: np.ndarray, masks: np.ndarray, device: str
) -> np.ndarray:
    """The batched colour transfer of ``pipelines.color`` on NHWC float arrays (masks (N, R, R))."""
    if mode == "none":
        return faces
    import torch

    from pipelines.color import color_transfer

    def nchw(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, np.float32))
        t = t.permute(0, 3, 1, 2) if t.ndim == 4 else t[:, None]
        return t.to(device)

    if device != "cpu" and not torch.cuda.is_available():  # e.g. onnxruntime-gpu beside a CPU torch
        device = "cpu"
    area = (masks > 0).astype(np.float32)
    out = color_transfer(mode, nchw(faces), nchw(refs), torch.Generator().manual_seed(0), mask=nchw(area))
    return out.permute(0, 2, 3, 1).float().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# torchsae swap


@dataclass
class SwapReport:
    faces: int = 0
    written: int = 0
    existing: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        text = f"swapped {self.written} faces ({rate:.1f} faces/s)"
        if self.existing:
            text += f", {self.existing} already done (--overwrite redoes them)"
        if self.skipped:
            text += ", skipped " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return text


def _load_face_crop(face: AlignedFace, resolution: int, face_type: str) -> np.ndarray | None:
    image = read_image(face.path)
    if image is None:
        return None
    try:
        mat = file_to_model_mat(face, resolution, face_type)
    except TorchSAEError:  # e.g. no landmarks to re-crop with: counted with the unreadable ones
        return None
    return cv2.warpAffine(
        image, mat, (resolution, resolution), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )


def swap_faces(
    swapper: Swapper,
    faces_dir: str | Path,
    output: str | Path,
    *,
    fmt: str = "png",
    batch_size: int = 16,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SwapReport:
    """Swap every aligned face of ``faces_dir`` A→B; write ``output/NAME.png`` (the R×R swap) or, with
    ``fmt='dfl'``, ``output/NAME.jpg`` (the swap at the file's size and face type, its DeepFaceLab
    metadata kept), plus ``output/swap_mask/NAME.png`` and ``output/face_mask/NAME.png``."""
    if fmt not in ("png", "jpg", "dfl"):
        raise TorchSAEError(f"format {fmt!r}: must be png, jpg or dfl")
    start = time.perf_counter()
    output = Path(output)
    scan = scan_faces(faces_dir, need_frame=False)
    report = SwapReport(faces=len(scan.faces) + sum(scan.skipped.values()), skipped=Counter(scan.skipped))
    for sub in ("", "swap_mask", "face_mask"):
        (output / sub).mkdir(parents=True, exist_ok=True)
    res, ftype = swapper.resolution, swapper.face_type
    suffix = ".jpg" if fmt in ("jpg", "dfl") else ".png"
    todo = []
    for face in scan.faces:
        if not overwrite and (output / (face.path.stem + suffix)).exists():
            report.existing += 1
        else:
            todo.append(face)
    if fmt == "dfl":
        for face in todo:
            file_type = face.meta.resolved_face_type
            if _type(file_type) != _type(ftype):
                raise TorchSAEError(
                    f"{face.path}: --format dfl keeps the file's metadata, so the model's face type "
                    f"({ftype}) must be the file's ({file_type}); use --format png"
                )
    workers = workers or default_workers()
    bar = _progress(len(todo), "face", progress)

    def write(face: AlignedFace, swapped: np.ndarray, sm: np.ndarray, fm: np.ndarray) -> None:
        stem = face.path.stem
        img = np.clip(swapped * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if fmt == "dfl":
            size = face.size
            big = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC) if size != res else img
            data = encode_image(big, ".jpg", str(face.path))
            meta = load_meta(face.path)
            atomic_write_bytes(output / f"{stem}.jpg", meta_into_bytes(data, meta, str(face.path)))
        else:
            atomic_write_bytes(output / f"{stem}{suffix}", encode_image(img, suffix, str(face.path)))
        for sub, mask in (("swap_mask", sm), ("face_mask", fm)):
            m = np.clip(mask[..., 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            atomic_write_bytes(output / sub / f"{stem}.png", encode_image(m, ".png", str(face.path)))

    with ThreadPoolExecutor(workers) as pool:
        pending_writes: deque[Future] = deque()
        for begin in range(0, len(todo), batch_size):
            chunk = todo[begin : begin + batch_size]
            crops = list(pool.map(lambda f: _load_face_crop(f, res, ftype), chunk))
            ok = [(f, c) for f, c in zip(chunk, crops, strict=True) if c is not None]
            report.skipped["unreadable"] += len(chunk) - len(ok)
            if ok:
                out = _swap_batch(swapper, [c for _, c in ok])
                for i, (face, _) in enumerate(ok):
                    pending_writes.append(
                        pool.submit(write, face, out.face[i], out.swap_mask[i], out.face_mask[i])
                    )
                report.written += len(ok)
            while len(pending_writes) > 4 * batch_size:
                pending_writes.popleft().result()
            bar.update(len(chunk))
        for fut in pending_writes:
            fut.result()
    bar.close()
    report.skipped = +report.skipped
    report.seconds = time.perf_counter() - start
    return report


def _type(name: str) -> str:
    from torchsae.dfl.geometry import SHORT_FACE_TYPES

    return SHORT_FACE_TYPES.get(name, name)


# --------------------------------------------------------------------------------------------------
# torchsae merge


@dataclass
class MergeReport:
    frames: int = 0  # frames in the source
    merged: int = 0  # frames written with at least one face pasted
    copied: int = 0  # frames written unchanged (no aligned face)
    existing: int = 0  # frames already in the output (resumed)
    faces: int = 0  # faces pasted
    skipped: Counter = field(default_factory=Counter)  # faces not pasted, by reason
    unreadable_frames: int = 0
    seamless_fallbacks: int = 0
    seconds: float = 0.0
    video: Path | None = None

    @property
    def frames_per_second(self) -> float:
        done = self.merged + self.copied
        return done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"merged {self.merged} frames ({self.faces} faces), copied {self.copied} without faces, "
            f"{self.frames_per_second:.1f} frames/s"
        )
        if self.existing:
            text += f"; {self.existing} already merged (--overwrite redoes them)"
        if self.unreadable_frames:
            text += f"; {self.unreadable_frames} unreadable frames skipped"
        if self.skipped:
            text += "; skipped faces: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        if self.seamless_fallbacks:
            text += f"; seamless fell back to overlay for {self.seamless_fallbacks} faces"
        if self.video is not None:
            text += f"; video {self.video}"
        return text


@dataclass
class _FaceJob:
    face: AlignedFace
    mat: np.ndarray  # frame -> model crop (what the model sees)
    paste_mat: np.ndarray  # frame -> model crop, with the output face scale
    crop: np.ndarray  # (R, R, 3) uint8
    gt_mask: np.ndarray | None  # (R, R) float32
    result: np.ndarray | None = None  # (R, R, 3) float32 after colour transfer
    mask: np.ndarray | None = None  # (R, R) float32 after erode/blur


@dataclass
class _FrameJob:
    name: str
    out_path: Path
    frame: np.ndarray | None
    source_path: Path | None  # copy these bytes when the frame has no faces (folder input)
    faces: list[_FaceJob]
    singular: int = 0  # faces dropped: a singular frame -> crop matrix or an unusable mask


class FrameSource:
    """The frames to merge: a folder of images or a video file, in order, by DeepFaceLab name."""

    def __init__(self, frames: str | Path) -> None:
        from torchsae.merge.video import VIDEO_SUFFIXES, probe

        self.path = Path(frames)
        self.video = None
        if self.path.is_file() and self.path.suffix.lower() in VIDEO_SUFFIXES:
            self.video = probe(self.path)
            self.names = None
        elif self.path.is_dir():
            self.files = list_images(self.path, FRAME_SUFFIXES)
            self.names = [p.name for p in self.files]
            if not self.files:
                raise TorchSAEError(f"{self.path}: no frames (.png/.jpg/... images) in this folder")
        else:
            raise TorchSAEError(f"{self.path}: neither a folder of frames nor a video file")

    def __len__(self) -> int:
        if self.video is not None:
            return int(self.video.frames or 0)
        return len(self.files)

    def items(self):
        """(name, path or None, frame or None): folder frames are decoded later, in the workers."""
        if self.video is None:
            for path in self.files:
                yield path.name, path, None
        else:
            from torchsae.merge.video import read_video

            for name, frame in read_video(self.path):
                yield name, None, frame


def _match_frames(source_names: list[str] | None, groups: dict[str, list[AlignedFace]]) -> dict[str, str]:
    """source_filename -> frame name: exact, else the same stem (``00001.png`` vs ``00001.jpg``)."""
    if source_names is None:  # a video: DeepFaceLab's 00001.png ... names, matched by number
        out = {}
        for name in groups:
            stem = Path(name).stem
            if stem.isdigit() and int(stem) >= 1:
                out[name] = f"{int(stem):05d}.png"
        return out
    exact = set(source_names)
    by_stem = {Path(n).stem: n for n in source_names}
    out = {}
    for name in groups:
        if name in exact:
            out[name] = name
        elif Path(name).stem in by_stem:
            out[name] = by_stem[Path(name).stem]
    return out


def merge_frames(
    swapper: Swapper,
    frames: str | Path,
    faces_dir: str | Path,
    output: str | Path,
    options: MergeOptions | None = None,
    *,
    batch_size: int = 16,
    workers: int | None = None,
    overwrite: bool = False,
    to_video: str | Path | None = None,
    fps: float | None = None,
    audio_from: str | Path | None = None,
    progress: bool = True,
    masks_dir: str | Path | None = None,
) -> MergeReport:
    """Merge every frame of ``frames`` (folder or video) into ``output`` (see the module doc).

    ``masks_dir``: also write each merged frame's paste mask (8-bit PNG, frame pixels) there, as
    DeepFaceLab's merger writes ``merged_mask``. ``to_video``: then encode the output frames at the
    source's frame rate (``fps`` for a folder, default 25), with the audio of the source video or of
    ``audio_from``.
    """
    options = (options or MergeOptions()).validate()
    start = time.perf_counter()
    source = FrameSource(frames)
    output = Path(output)
    if source.video is None and output.resolve() == source.path.resolve():
        raise TorchSAEError(f"{output}: the output folder must not be the frames folder")
    output.mkdir(parents=True, exist_ok=True)
    if masks_dir is not None:
        Path(masks_dir).mkdir(parents=True, exist_ok=True)
    scan = scan_faces(faces_dir)
    groups = scan.by_frame()
    report = MergeReport(skipped=Counter(scan.skipped))
    names_of_frames = source.names
    matched = _match_frames(names_of_frames, groups)
    faces_of: dict[str, list[AlignedFace]] = {}
    for src_name, faces in groups.items():
        if src_name not in matched:
            report.skipped["whose frame is missing"] += len(faces)
            continue
        faces_of.setdefault(matched[src_name], []).extend(faces)
    res, ftype = swapper.resolution, swapper.face_type
    workers = workers or default_workers()
    gt_policy = "hull" if options.mask_mode == "dst" else "xseg"
    need_gt = options.needs_ground_truth
    # a video has no frame names until it is read; a missing frame is noticed at the end
    video_names_seen: set[str] = set()

    def out_path_for(name: str) -> Path:
        return output / name

    def prepare(name: str, path: Path | None, frame: np.ndarray | None) -> _FrameJob | None:
        faces = faces_of.get(name, [])
        if frame is None and (faces or path is None):
            frame = read_image(path)
            if frame is None:
                return None
        jobs, singular = [], 0
        for face in faces:
            try:
                mat = frame_to_model_mat(face, res, ftype)
            except TorchSAEError:
                singular += 1
                continue
            crop = cv2.warpAffine(frame, mat, (res, res), flags=cv2.INTER_CUBIC)
            gt = None
            if need_gt:
                try:
                    gt = face_masks_at(
                        face.meta, face.meta.image_hw, res, gt_policy, str(face.path), face_type=ftype
                    )[0][..., 0]
                except TorchSAEError:  # a malformed stored mask or missing landmarks
                    singular += 1
                    continue
            jobs.append(_FaceJob(face, mat, scale_about_centre(mat, res, options.face_scale), crop, gt))
        return _FrameJob(name, out_path_for(name), frame, path, jobs, singular)

    def finish(job: _FrameJob) -> tuple[int, int]:
        """Paste, encode and write one frame; (faces pasted, seamless fallbacks)."""
        suffix = Path(job.name).suffix or ".png"
        fallbacks = 0
        if not job.faces and job.source_path is not None:  # unchanged: the source's own bytes
            tmp = job.out_path.with_name(f".{job.name}.tmp")
            shutil.copyfile(job.source_path, tmp)
            fileio.replace(tmp, job.out_path)
            full = None
        else:
            frame = job.frame.copy()
            full = np.zeros(frame.shape[:2], np.float32)
            for fj in job.faces:
                frame, m, fell = paste_face(frame, fj.result, fj.mask, fj.paste_mat, options.mode)
                np.maximum(full, m, out=full)
                fallbacks += int(fell)
            atomic_write_bytes(job.out_path, encode_image(frame, suffix, str(job.out_path)))
        if masks_dir is not None:
            mask = full if full is not None else np.zeros(read_image(job.out_path).shape[:2], np.float32)
            m8 = np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
            atomic_write_bytes(
                Path(masks_dir) / (Path(job.name).stem + ".png"), encode_image(m8, ".png", job.name)
            )
        return len(job.faces), fallbacks

    def swap_pending(batch: list[_FaceJob]) -> None:
        if not batch:
            return
        out = _swap_batch(swapper, [fj.crop for fj in batch])
        masks = []
        for i, fj in enumerate(batch):
            chosen = choose_mask(
                options.mask_mode, out.swap_mask[i, ..., 0], out.face_mask[i, ..., 0], fj.gt_mask
            )
            masks.append(process_mask(chosen, options.erode_mask_modifier, options.blur_mask_modifier))
        faces = out.face
        if options.mode != "seamless" and options.color_transfer_mode != "none":
            refs = np.stack([fj.crop for fj in batch]).astype(np.float32) / 255.0
            faces = _color_transfer(
                options.color_transfer_mode, faces, refs, np.stack(masks), getattr(swapper, "device", "cpu")
            )
        for i, fj in enumerate(batch):
            fj.result, fj.mask = faces[i], masks[i]

    total = len(source)
    bar = _progress(total or None, "frame", progress)
    lookahead = max(2 * workers, batch_size)
    with ThreadPoolExecutor(workers) as pool:
        prepared: deque[Future] = deque()
        waiting: deque[_FrameJob] = deque()  # frames whose faces are not swapped yet, in order
        batch: list[_FaceJob] = []
        writes: deque[Future] = deque()

        def collect_writes(limit: int) -> None:
            while len(writes) > limit:
                faces_done, fallbacks = writes.popleft().result()
                report.faces += faces_done
                report.seamless_fallbacks += fallbacks
                bar.update(1)

        def flush() -> None:
            swap_pending(batch)
            batch.clear()
            while waiting:
                job = waiting.popleft()
                writes.append(pool.submit(finish, job))
            collect_writes(2 * workers)

        def take(fut: Future) -> None:
            job = fut.result()
            if job is None:
                report.unreadable_frames += 1
                bar.update(1)
                return
            waiting.append(job)
            if job.singular:
                report.skipped["with a singular matrix or an unusable mask"] += job.singular
            batch.extend(job.faces)
            if job.faces:
                report.merged += 1
            else:
                report.copied += 1
            if len(batch) >= batch_size or len(waiting) > lookahead:  # bounded memory when faces are rare
                flush()

        for name, path, frame in source.items():
            report.frames += 1
            video_names_seen.add(name)
            if not overwrite and out_path_for(name).exists():
                report.existing += 1
                bar.update(1)
                continue
            prepared.append(pool.submit(prepare, name, path, frame))
            while len(prepared) > lookahead:
                take(prepared.popleft())
        while prepared:
            take(prepared.popleft())
        flush()
        collect_writes(0)
    bar.close()
    if source.video is not None:
        missing = [n for n in faces_of if n not in video_names_seen]
        report.skipped["whose frame is missing"] += sum(len(faces_of[n]) for n in missing)
    report.skipped = +report.skipped
    report.seconds = time.perf_counter() - start
    if to_video is not None:
        report.video = frames_to_video(
            output,
            to_video,
            names=_frame_order(source, output),
            fps=fps or (source.video.fps if source.video is not None else 25.0),
            audio_from=audio_from
            or (source.path if source.video is not None and source.video.has_audio else None),
        )
    return report


def _frame_order(source: FrameSource, output: Path) -> list[str]:
    if source.names is not None:
        return [n for n in source.names if (output / n).exists()]
    return [p.name for p in list_images(output, FRAME_SUFFIXES)]


def frames_to_video(
    folder: str | Path,
    video: str | Path,
    *,
    names: list[str] | None = None,
    fps: float = 25.0,
    audio_from: str | Path | None = None,
) -> Path:
    """Encode the frames of ``folder`` (``names`` in order, default every image in name order)."""
    from torchsae.merge.video import probe, write_video

    folder = Path(folder)
    paths = [folder / n for n in names] if names is not None else list_images(folder, FRAME_SUFFIXES)
    if not paths:
        raise TorchSAEError(f"{folder}: no frames to encode into {video}")
    first = read_image(paths[0])
    if first is None:
        raise TorchSAEError(f"{paths[0]}: unreadable frame")
    if audio_from is not None and not probe(audio_from).has_audio:
        audio_from = None

    def frames():
        for path in paths:
            image = read_image(path)
            if image is None:
                raise TorchSAEError(f"{path}: unreadable frame")
            yield image

    return write_video(frames(), video, (first.shape[1], first.shape[0]), fps, audio_from=audio_from)
