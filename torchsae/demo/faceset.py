"""Write the synthetic demo faceset: DeepFaceLab-format A and B (and more) folders plus held-out truth.

Layout of ``out_dir`` (count faces per identity, truth_count pairs)::

    A/00000.jpg ...        identity A, one independent scene per file (DeepFaceLab whole_face JPEGs)
    B/00000.jpg ...        identity B, its own independent scenes from the same distribution
    truth/0000_a.jpg       held-out scene 0 rendered as A ...
    truth/0000_b.jpg       ... and the *same* scene rendered as B: the ideal A->B swap of 0000_a.jpg
    truth/0000_mask.png    pixels that are face in both renders (8-bit, 0/255, 512x512)
    truth/manifest.json    identities, scenes and file names of the pairs
    frames/, frames_aligned/, frames_truth/   only with ``frames`` > 0: full scenes, the faces cut
                           out of them and the same scenes as B (see torchsae.demo.frames)
    truth_ids/<ID>/0000.jpg        only with more than two identities: held-out scene 0 rendered as
    truth_ids/<ID>/0000_mask.png   identity ID and the pixels that are face in it (0/255); every
    truth_ids/manifest.json        identity renders the *same* scenes, so for any ordered pair X != Y,
                                   truth_ids/Y/0000.jpg is the ideal X->Y swap of truth_ids/X/0000.jpg
                                   inside mask_X & mask_Y (``torchsae.demo.score.load_pair_truth``).
                                   truth_ids/A/0000.jpg has the same bytes as truth/0000_a.jpg.
    demo_faceset.json      written last: the parameters, so an identical request reuses the folder

Every JPEG is what DeepFaceLab's extractor plus XSeg apply would leave: OpenCV quality-90 JPEG of the
512x512 ``whole_face`` crop with an APP15 dict holding face_type, landmarks, source_filename,
source_rect, source_landmarks, image_to_face_mat and a 256x256 binary xseg_mask. There is no
separate source frame for synthetic faces: the crop *is* the frame, so ``image_to_face_mat`` is the
identity matrix, ``source_landmarks`` equal ``landmarks`` and ``source_rect`` is the landmarks' box.

Determinism: each file's scene comes from its own generator seeded by (seed, kind, identity, index),
so the bytes depend only on those, not on the worker count or the order of work.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from torchsae.demo.frames import frame_item
from torchsae.demo.frames import write_manifest as write_frames_manifest
from torchsae.demo.params import Scene, identity_for, sample_scene
from torchsae.demo.render import RenderedFace, render_face
from torchsae.dfl.geometry import transform_points
from torchsae.dfl.meta import DFLMeta, encode_xseg_mask, meta_into_bytes
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_write_bytes, atomic_write_text

FORMAT = "torchsae-demo-faceset"
VERSION = 1
JPEG_QUALITY = 90  # DeepFaceLab's extractor default
XSEG_SIZE = 256  # DeepFaceLab's XSeg apply always stores 256x256 masks
_FACESET_KIND, _TRUTH_KIND = 0, 1
_OUR_FILES = re.compile(
    r"^(\d{4,}\.jpg|\d{4,}_(a|b)\.jpg|\d{4,}_mask\.png|manifest\.json|\d{5,}\.png|\d{5,}_\d+\.jpg)$"
)
FRAME_FOLDERS = ("frames", "frames_aligned", "frames_truth")
TRUTH_IDS = "truth_ids"
_RESERVED = ("truth", TRUTH_IDS, *FRAME_FOLDERS)
STAMP = "demo_faceset.json"


@dataclass(frozen=True)
class DemoFaceset:
    """Where a demo faceset was written and what it holds."""

    root: Path
    identities: tuple[str, ...]  # A and B first; more only when made with more identities
    count: int
    truth_count: int
    seed: int
    seconds: float  # wall time of the generation (0 when an existing folder was reused)

    @property
    def dirs(self) -> tuple[Path, Path]:
        """The A and B faceset folders."""
        return self.root / self.identities[0], self.root / self.identities[1]

    @property
    def truth_dir(self) -> Path:
        """The A->B truth pairs (always written)."""
        return self.root / "truth"

    @property
    def truth_ids_dir(self) -> Path:
        """The held-out scenes rendered as every identity (written with more than two identities)."""
        return self.root / TRUTH_IDS

    def identity_dir(self, name: str) -> Path:
        return self.root / name

    @property
    def frames_dir(self) -> Path:
        """Full frames of identity A (present when made with ``frames`` > 0; see demo.frames)."""
        return self.root / "frames"

    @property
    def frames_aligned_dir(self) -> Path:
        return self.root / "frames_aligned"

    @property
    def frames_truth_dir(self) -> Path:
        return self.root / "frames_truth"


def scene_for(seed: int, kind: int, name: str, index: int) -> Scene:
    """The scene of one file; its own generator makes every file independent of every other."""
    key = [int(seed) & 0xFFFFFFFF, kind, zlib.crc32(name.encode("utf-8")), int(index)]
    return sample_scene(np.random.default_rng(key))


def encode_face(
    face: RenderedFace,
    source_filename: str,
    path_for_errors: str,
    image_to_face_mat: np.ndarray | None = None,
) -> bytes:
    """The complete DeepFaceLab JPEG (image + APP15 metadata) of a rendered face, in memory.

    ``image_to_face_mat`` (frame -> crop) is recorded for faces cut out of a larger frame
    (``torchsae.demo.frames``); source landmarks and rect are then in that frame's pixels.
    """
    ok, jpeg = cv2.imencode(".jpg", face.image, [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY])
    if not ok:
        raise TorchSAEError(f"{path_for_errors}: OpenCV could not encode the JPEG")
    lm = face.landmarks.astype(np.float32)
    mat = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) if image_to_face_mat is None else image_to_face_mat
    src_lm = lm if image_to_face_mat is None else transform_points(lm, mat, invert=True).astype(np.float32)
    meta = DFLMeta(
        has_metadata=True,
        face_type="whole_face",
        landmarks=lm,
        source_filename=source_filename,
        source_rect=np.array(
            [
                np.floor(src_lm[:, 0].min()),
                np.floor(src_lm[:, 1].min()),
                np.ceil(src_lm[:, 0].max()),
                np.ceil(src_lm[:, 1].max()),
            ],
            dtype=np.int64,
        ),
        source_landmarks=src_lm.copy(),
        image_to_face_mat=np.asarray(mat, dtype=np.float64),
        xseg_mask_buf=encode_xseg_mask(face.xseg_mask(XSEG_SIZE)),
    )
    return meta_into_bytes(jpeg.tobytes(), meta, path_for_errors)


def _faceset_item(job: tuple[Path, int, str, int]) -> None:
    folder, seed, name, index = job
    path = folder / f"{index:05d}.jpg"
    face = render_face(identity_for(name), scene_for(seed, _FACESET_KIND, name, index))
    atomic_write_bytes(path, encode_face(face, f"{index:05d}.png", str(path)))


def _truth_item(job: tuple[Path, int, tuple[str, str], int]) -> dict:
    folder, seed, (name_a, name_b), index = job
    scene = scene_for(seed, _TRUTH_KIND, "truth", index)
    masks = []
    for name, tag in ((name_a, "a"), (name_b, "b")):
        path = folder / f"{index:04d}_{tag}.jpg"
        face = render_face(identity_for(name), scene)
        atomic_write_bytes(path, encode_face(face, f"truth_{index:04d}.png", str(path)))
        masks.append(face.mask)
    both = (masks[0] & masks[1]) * np.uint8(255)
    ok, png = cv2.imencode(".png", both)
    if not ok:
        raise TorchSAEError(f"{folder / f'{index:04d}_mask.png'}: OpenCV could not encode the PNG")
    atomic_write_bytes(folder / f"{index:04d}_mask.png", png.tobytes())
    return {
        "index": index,
        "a": f"{index:04d}_a.jpg",
        "b": f"{index:04d}_b.jpg",
        "mask": f"{index:04d}_mask.png",
        "scene": scene.to_dict(),
    }


def _truth_id_item(job: tuple[Path, int, str, int]) -> None:
    folder, seed, name, index = job
    face = render_face(identity_for(name), scene_for(seed, _TRUTH_KIND, "truth", index))
    path = folder / f"{index:04d}.jpg"
    atomic_write_bytes(path, encode_face(face, f"truth_{index:04d}.png", str(path)))
    ok, png = cv2.imencode(".png", face.mask * np.uint8(255))
    if not ok:
        raise TorchSAEError(f"{folder / f'{index:04d}_mask.png'}: OpenCV could not encode the PNG")
    atomic_write_bytes(folder / f"{index:04d}_mask.png", png.tobytes())


def identity_names(count: int) -> tuple[str, ...]:
    """``count`` identity names: A, B, C, ... Z, then id_26, id_27, ... (A and B are the presets)."""
    if count < 2:
        raise TorchSAEError(f"identities {count}: need at least two")
    return tuple(chr(ord("A") + i) if i < 26 else f"id_{i}" for i in range(count))


def _run(func, jobs: list, workers: int) -> list:
    if workers <= 1 or len(jobs) < 2:
        return [func(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(func, jobs, chunksize=max(1, len(jobs) // (4 * workers)))


def _faces_only(params: dict) -> dict:
    return {key: value for key, value in params.items() if key != "frames"}


def _check_target(root: Path, params: dict, overwrite: bool) -> str:
    """``"same"`` when ``root`` already holds exactly this faceset, ``"frames"`` when it holds the same
    faces with other (or no) frames (only the frames are then redone), ``"new"`` when it is empty or
    was cleared; raise when it holds something else."""
    stamp = root / STAMP
    try:
        stored = json.loads(stamp.read_text("utf-8")) if stamp.is_file() else None
    except (OSError, ValueError):
        stored = None
    if stored is not None and not overwrite:
        if stored == params:
            return "same"
        if isinstance(stored, dict) and _faces_only(stored) == _faces_only(params):
            _clear(root, FRAME_FOLDERS, overwrite=True)
            stamp.unlink(missing_ok=True)
            return "frames"
    earlier = stored.get("identities", []) if isinstance(stored, dict) else []
    earlier = earlier if isinstance(earlier, list) else []  # a previous run's extra identities go too
    names = list(dict.fromkeys([*params["identities"], *(n for n in earlier if _plain_name(n))]))
    _clear_truth_ids(root, overwrite)
    _clear(root, (*names, "truth", *FRAME_FOLDERS), overwrite)
    for name in (*(n for n in names if n not in params["identities"]), TRUTH_IDS):
        if (root / name).is_dir() and not any((root / name).iterdir()):
            (root / name).rmdir()  # emptied: an identity (or truth_ids) this faceset no longer has
    stamp.unlink(missing_ok=True)  # written again only once the new faceset is complete
    return "new"


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and bool(re.fullmatch(r"[A-Za-z0-9_-]+", name)) and name not in _RESERVED


def _clear_truth_ids(root: Path, overwrite: bool) -> None:
    """Clear ``truth_ids/<ID>`` folders and the manifest (as :func:`_clear`), then remove the folders."""
    top = root / TRUTH_IDS
    if not top.is_dir():
        return
    subdirs = [p for p in top.iterdir() if p.is_dir() and _plain_name(p.name)]
    _clear(top, [p.name for p in subdirs], overwrite)
    _clear(root, (TRUTH_IDS,), overwrite, skip=set(subdirs))
    for p in subdirs:
        p.rmdir()


def _clear(root: Path, names, overwrite: bool, skip: set[Path] = frozenset()) -> None:
    """Delete our own generated files in ``root/<names>``; raise on foreign files (or any, without
    ``overwrite``)."""
    for folder in (root / name for name in names):
        if not folder.is_dir():
            continue
        files = [p for p in folder.iterdir() if not p.name.startswith(".") and p not in skip]
        foreign = [p for p in files if not _OUR_FILES.match(p.name)]
        if foreign:
            raise TorchSAEError(
                f"{folder}: holds files the demo did not write (e.g. {foreign[0].name}); choose another folder"
            )
        if files and not overwrite:
            raise TorchSAEError(
                f"{folder}: already holds a different or incomplete demo faceset; pass overwrite "
                "(--overwrite) to replace it"
            )
        for p in files:  # only our own generated names, so a smaller count leaves no stale faces behind
            p.unlink()


def make_demo_faceset(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    identities: Sequence[str] | int = ("A", "B"),
    truth_count: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    frames: int = 0,
) -> DemoFaceset:
    """Render ``count`` faces per identity and ``truth_count`` held-out pairs into ``out_dir``.

    ``truth_count`` defaults to min(count, 32). Identities "A" and "B" are fixed presets; other names
    get a person derived from the name; an int N means :func:`identity_names` (N). With more than two
    identities, ``truth_ids/`` also holds every truth scene rendered as every identity. Re-running with the same arguments reuses a complete folder;
    a folder holding a different demo faceset is replaced only with ``overwrite=True``. ``frames`` > 0
    also writes that many full frames with their aligned faces and truth (``torchsae.demo.frames``).
    """
    if isinstance(identities, int):
        identities = identity_names(identities)
    if len(identities) < 2 or len(set(identities)) != len(identities):
        raise TorchSAEError(f"identities {tuple(identities)!r}: need two or more different names (A, B, ...)")
    for name in identities:
        if not _plain_name(str(name)):
            raise TorchSAEError(
                f"identity {name!r}: must be a plain folder name (letters, digits, _ or -), not 'truth'"
            )
    if count < 1:
        raise TorchSAEError(f"count {count}: need at least one face per identity")
    truth_count = min(count, 32) if truth_count is None else int(truth_count)
    if truth_count < 0:
        raise TorchSAEError(f"truth_count {truth_count}: must be 0 or more")
    root = Path(out_dir)
    names = tuple(str(name) for name in identities)
    params = {
        "format": FORMAT,
        "version": VERSION,
        "count": int(count),
        "truth_count": truth_count,
        "seed": int(seed),
        "identities": list(names),
    }
    if frames < 0:
        raise TorchSAEError(f"frames {frames}: must be 0 or more")
    if frames:  # absent when 0, so the stamp of a faceset without frames is unchanged
        params["frames"] = int(frames)
    result = DemoFaceset(root, names, int(count), truth_count, int(seed), 0.0)
    state = _check_target(root, params, overwrite)
    if state == "same":
        return result
    start = time.perf_counter()
    if state == "new":
        _write_faces(root, names, int(seed), int(count), truth_count, workers)
    if frames:
        for name in FRAME_FOLDERS:
            (root / name).mkdir(parents=True, exist_ok=True)
        pair = (names[0], names[1])
        items = _run(frame_item, [(root, int(seed), pair, i) for i in range(frames)], workers)
        write_frames_manifest(root, int(seed), pair, items)
    atomic_write_text(root / STAMP, json.dumps(params, indent=1))
    return DemoFaceset(root, names, int(count), truth_count, int(seed), time.perf_counter() - start)


def _write_faces(
    root: Path, names: tuple[str, ...], seed: int, count: int, truth_count: int, workers: int
) -> None:
    """The identities' facesets, the A->B truth pairs and, with more than two identities, the truth
    scenes as every identity (everything but the frames)."""
    jobs = [(root / name, int(seed), name, i) for name in names for i in range(count)]
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    _run(_faceset_item, jobs, workers)
    truth = root / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    pair = (names[0], names[1])
    items = _run(_truth_item, [(truth, int(seed), pair, i) for i in range(truth_count)], workers)
    manifest = {
        "format": "torchsae-demo-truth",
        "version": VERSION,
        "seed": int(seed),
        "resolution": 512,
        "face_type": "whole_face",
        "about": "Each item is one held-out scene rendered as identity a and as identity b: b is the ideal "
        "swap of a. mask = pixels that are face (skin, no hair) in both renders.",
        "identities": {"a": identity_for(names[0]).to_dict(), "b": identity_for(names[1]).to_dict()},
        "items": items,
    }
    atomic_write_text(truth / "manifest.json", json.dumps(manifest, indent=1))
    if len(names) > 2:
        _write_truth_ids(root, names, seed, truth_count, workers, items)


def _write_truth_ids(
    root: Path, names: tuple[str, ...], seed: int, truth_count: int, workers: int, items: list[dict]
) -> None:
    top = root / TRUTH_IDS
    for name in names:
        (top / name).mkdir(parents=True, exist_ok=True)
    jobs = [(top / name, int(seed), name, i) for name in names for i in range(truth_count)]
    _run(_truth_id_item, jobs, workers)
    manifest = {
        "format": "torchsae-demo-truth-ids",
        "version": VERSION,
        "seed": int(seed),
        "resolution": 512,
        "face_type": "whole_face",
        "about": "Each item is one held-out scene; <ID>/<NNNN>.jpg renders it as identity ID, "
        "<ID>/<NNNN>_mask.png is where that render is face (skin, no hair). For an ordered pair X != Y, "
        "Y's render is the ideal X->Y swap of X's inside mask_X & mask_Y.",
        "identities": {name: identity_for(name).to_dict() for name in names},
        "pairs": [f"{x}_to_{y}" for x in names for y in names if x != y],
        "items": [
            {"index": it["index"], "image": f"{it['index']:04d}.jpg", "mask": f"{it['index']:04d}_mask.png",
             "scene": it["scene"]}
            for it in items
        ],
    }  # fmt: skip
    atomic_write_text(top / "manifest.json", json.dumps(manifest, indent=1))
