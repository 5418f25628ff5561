"""The CPU mask sidecar: a versioned, incremental, atomically replaced side index beside a faceset.

Why: DeepFaceLab decodes an XSeg PNG and draws landmark hulls at 512² for every sample of every step.
Those masks only change when a file changes, so we draw them once, at the working resolution, into a
memory-mappable ``uint8 [N, 2, R, R]`` array (channel 0 full face, channel 1 eyes+mouth) that every
loader rank shares through the page cache.

Layout (``DIR/.torchsae/``)::

    lock                         file lock (filelock): one builder per node, the others wait then load
    index_r128_xseg_f/CURRENT    names the live generation; replaced atomically (the commit point)
    index_r128_xseg_f/v000003/   manifest.json, masks.npy, landmarks.npy, recrop.npy, yaw.npy, skipped.json
    index_r128_xseg_f/.build-*/  a build in progress (or one that crashed: removed by the next build)

The family name carries the model's face type (``_f``): files cropped for another face type are
re-cropped (spec §5, "Crop"), so their masks differ per model face type. Without a face type
(``index_r128_xseg``) every file is used as stored. ``recrop.npy`` holds, per file, the float32 (2, 3)
affine from the file's pixels to the R² crop of the model's face type, NaN where the file already is
of that type (it is only resized).

Where (``sidecar_dir``): ``DIR/.torchsae/`` by default. ``index_root`` (``--index-dir``, config key
``data.index_dir``, or the ``TORCHSAE_INDEX_DIR`` environment variable) moves it out of the faceset,
for read-only facesets (NAS shares, container volumes, another user's data): the folder is then
``INDEX_ROOT/<faceset name>-<hash of the faceset's resolved path>/``, so two facesets never share one
and the same faceset always finds its own (which keeps builds incremental).

A build writes a complete new generation, fsyncs it, then swaps ``CURRENT``; a crash at any point
leaves the previous generation live. Entries whose size and mtime are unchanged are copied from the
previous generation; ``verify=True`` also re-reads each file's metadata digest (for tools that keep
mtimes). Only added or changed files are decoded. The faceset's own files are only ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from pipelines.index_scan import (
    JPEG_SUFFIXES,
    OTHER_IMAGE_SUFFIXES,
    Indexed,
    metadata_digest,
    process_file,
)
from torchsae.config import MASK_POLICIES
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_write_text, fsync_dir, fsync_file

INDEX_VERSION = 2  # 2: the family is keyed by the model face type; recrop.npy
SIDECAR = ".torchsae"
INDEX_DIR_ENV = "TORCHSAE_INDEX_DIR"  # the index location when no index_root is passed


class SideIndexError(TorchSAEError):
    """The side index cannot be built or loaded."""


@dataclass
class FacesetIndex:
    """A loaded side index. Row ``i`` of every array belongs to ``files[i]``.

    ``landmarks`` are in the file's own pixel coordinates (``image_sizes[i]`` wide), NaN where a file
    has none; ``masks`` is a read-only memmap; ``recrop`` float32 [N, 2, 3] is the re-crop affine per
    file (NaN rows: resize only) and ``face_type`` the model face type it was built for (None: as stored).
    """

    root: Path
    resolution: int
    policy: str
    directory: Path
    files: list[str]
    entries: list[dict]
    masks: np.ndarray
    landmarks: np.ndarray
    skipped: list[dict] = field(default_factory=list)
    face_type: str | None = None
    recrop: np.ndarray | None = None

    @property
    def needs_recrop(self) -> bool:
        """Whether any file must be warped (not just resized) to the model's crop."""
        return self.recrop is not None and bool(np.isfinite(self.recrop).all(axis=(1, 2)).any())

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[str]:
        """Absolute paths of the usable files, in index order."""
        return [str(self.root / name) for name in self.files]

    @property
    def image_sizes(self) -> np.ndarray:
        return np.array([entry["image_size"] for entry in self.entries], dtype=np.int64)

    def gather_masks(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [n, 2, R, R] masks for sample ``indices`` (a copy, safe to pin or hand to torch)."""
        return np.ascontiguousarray(self.masks[np.asarray(indices, dtype=np.int64)])


@dataclass
class BuildReport:
    """What a build did: counts for the summary line and for incremental-rebuild tests."""

    index: FacesetIndex
    processed: int
    reused: int

    def summary(self) -> str:
        skipped = len(self.index.skipped)
        where = self.index.directory / "skipped.json"
        return f"indexed {len(self.index)} files, skipped {skipped} (see {where})"


def short_face_type(face_type: str | None) -> str | None:
    """``'f'`` for ``'f'`` or ``'full_face'``; None stays None; anything else is a SideIndexError."""
    from torchsae.dfl.geometry import SHORT_FACE_TYPES

    if face_type is None or face_type in SHORT_FACE_TYPES:
        return face_type
    for short, long in SHORT_FACE_TYPES.items():
        if face_type == long:
            return short
    raise SideIndexError(f"face type {face_type!r}: must be one of {', '.join(SHORT_FACE_TYPES)}")


def sidecar_dir(root: str | Path, index_root: str | Path | None = None) -> Path:
    """The folder holding a faceset's indexes: ``root/.torchsae`` unless ``index_root`` (or else the
    ``TORCHSAE_INDEX_DIR`` environment variable) is set; then ``INDEX_ROOT/<name>-<16 hex digits>``,
    keyed by the faceset's resolved path so that two facesets never share an index."""
    index_root = index_root or os.environ.get(INDEX_DIR_ENV) or None
    if index_root is None:
        return Path(root) / SIDECAR
    resolved = Path(root).resolve()
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.name)[:48] or "faceset"
    return Path(index_root).expanduser() / f"{name}-{key}"


def index_dir(
    root: str | Path,
    resolution: int,
    policy: str,
    face_type: str | None = None,
    index_root: str | Path | None = None,
) -> Path:
    """The folder that holds every generation of one (resolution, policy, model face type) index."""
    short = short_face_type(face_type)
    suffix = "" if short is None else f"_{short}"
    return sidecar_dir(root, index_root) / f"index_r{resolution}_{policy}{suffix}"


def _make_sidecar(root: Path, sidecar: Path) -> None:
    """Create the index folder; outside the faceset, note which faceset it belongs to."""
    try:
        if sidecar.parent == root:
            sidecar.mkdir(exist_ok=True)
            return
        sidecar.mkdir(parents=True, exist_ok=True)
        note = sidecar / "FACESET"
        if not note.is_file():
            atomic_write_text(note, f"{root.resolve()}\n")
    except OSError as exc:
        hint = (
            "; give --index-dir DIR (or set TORCHSAE_INDEX_DIR) to keep the index outside a read-only faceset"
            if sidecar.parent == root
            else ""
        )
        raise SideIndexError(
            f"{sidecar}: cannot create the side index folder ({exc.strerror}){hint}"
        ) from exc


@contextlib.contextmanager
def build_lock(root: str | Path, index_root: str | Path | None = None) -> Iterator[None]:
    """Exclusive per-faceset lock; under torchrun one rank per node builds while the others block here.

    ``filelock`` takes an OS lock on the sidecar's ``lock`` file (flock on POSIX, msvcrt.locking on
    Windows): it is released when the holder exits or dies, so a crashed builder never leaves the
    faceset locked.
    """
    sidecar = sidecar_dir(root, index_root)
    _make_sidecar(Path(root), sidecar)
    try:
        lock = FileLock(str(sidecar / "lock"))
        lock.acquire()
    except (OSError, Timeout) as exc:
        raise SideIndexError(
            f"{sidecar}: cannot open or take the index lock file ({exc}); an out-of-date index in a "
            "read-only faceset needs --index-dir DIR (or TORCHSAE_INDEX_DIR)"
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _check_args(root: Path, resolution: int, policy: str, face_type: str | None) -> None:
    short_face_type(face_type)
    if not root.is_dir():
        raise SideIndexError(f"{root}: not a folder of face images")
    if policy not in MASK_POLICIES:
        raise SideIndexError(f"mask policy {policy!r}: must be one of {', '.join(MASK_POLICIES)}")
    if resolution < 16:
        raise SideIndexError(f"resolution {resolution}: must be at least 16")


def load_index(
    root: str | Path,
    resolution: int,
    policy: str = "xseg",
    face_type: str | None = None,
    index_root: str | Path | None = None,
) -> FacesetIndex:
    """Load the live generation; raise SideIndexError if there is none (run ``torchsae index``)."""
    root = Path(root)
    face_type = short_face_type(face_type)
    family = index_dir(root, resolution, policy, face_type, index_root)
    try:
        generation = family / (family / "CURRENT").read_text(encoding="utf-8").strip()
        manifest = json.loads((generation / "manifest.json").read_text(encoding="utf-8"))
        skipped = json.loads((generation / "skipped.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SideIndexError(
            f"{family}: no usable index at resolution {resolution} with policy {policy!r}; "
            f"run `torchsae index {root} --resolution {resolution} --mask-policy {policy}`"
        ) from exc
    if manifest.get("version") != INDEX_VERSION:
        raise SideIndexError(
            f"{generation}: index version {manifest.get('version')} != {INDEX_VERSION}; rebuild it"
        )
    entries = manifest["entries"]
    count = len(entries)
    try:
        if count:
            masks = np.load(generation / "masks.npy", mmap_mode="r")
            landmarks = np.load(generation / "landmarks.npy")
            recrop = np.load(generation / "recrop.npy")
        else:
            masks = np.zeros((0, 2, resolution, resolution), np.uint8)
            landmarks = np.zeros((0, 68, 2), np.float32)
            recrop = np.zeros((0, 2, 3), np.float32)
    except (OSError, ValueError) as exc:
        raise SideIndexError(f"{generation}: unreadable index arrays ({exc}); rebuild it") from exc
    if (
        masks.shape != (count, 2, resolution, resolution)
        or landmarks.shape[0] != count
        or recrop.shape != (count, 2, 3)
    ):
        raise SideIndexError(
            f"{generation}: masks.npy, landmarks.npy or recrop.npy does not match the manifest; rebuild it"
        )
    names = [e["name"] for e in entries]
    return FacesetIndex(
        root, resolution, policy, generation, names, entries, masks, landmarks, skipped, face_type, recrop
    )


def _try_load(
    root: Path, resolution: int, policy: str, face_type: str | None, index_root: str | Path | None = None
) -> FacesetIndex | None:
    try:
        return load_index(root, resolution, policy, face_type, index_root)
    except SideIndexError:
        return None


def _scan(root: Path, unreadable: dict[str, str] | None = None) -> dict[str, os.stat_result]:
    """Candidate files at the top level of the faceset (DeepFaceLab does not recurse either).

    An entry that cannot even be stat'ed (a symlink loop, a dangling link, no permission) goes into
    ``unreadable`` as name -> reason, to be listed as skipped like any other bad file.
    """
    found = {}
    for entry in os.scandir(root):
        suffix = Path(entry.name).suffix.lower()
        if entry.name.startswith(".") or suffix not in JPEG_SUFFIXES | OTHER_IMAGE_SUFFIXES:
            continue
        try:
            if entry.is_file():
                found[entry.name] = entry.stat()
            elif entry.is_symlink() and not entry.is_dir() and unreadable is not None:
                unreadable[entry.name] = "a symbolic link to nothing (dangling)"
        except OSError as exc:
            if unreadable is not None:
                unreadable[entry.name] = f"cannot read the file ({exc.strerror or exc})"
    return dict(sorted(found.items()))


def _unchanged(old: dict, stat: os.stat_result, path: Path, verify: bool) -> bool:
    if old["size"] != stat.st_size or old["mtime_ns"] != stat.st_mtime_ns:
        return False
    if not verify or "digest" not in old:
        return True
    try:
        return metadata_digest(path.read_bytes(), str(path)) == old["digest"]
    except (OSError, TorchSAEError):
        return False


def is_stale(
    root: str | Path,
    resolution: int,
    policy: str,
    verify: bool = False,
    face_type: str | None = None,
    index_root: str | Path | None = None,
) -> bool:
    """Whether the faceset changed since the live index was built (or there is none)."""
    root = Path(root)
    current = _try_load(root, resolution, policy, face_type, index_root)
    if current is None:
        return True
    known = {e["name"]: e for e in current.entries} | {s["name"]: s for s in current.skipped}
    files = _scan(root)
    if set(files) != set(known):
        return True
    return not all(_unchanged(known[n], st, root / n, verify) for n, st in files.items())


def _one_thread() -> None:
    """Worker initialiser: one OpenCV thread per process, or N processes x N threads oversubscribe."""
    import cv2

    cv2.setNumThreads(1)


def _run_jobs(
    paths: list[str], resolution: int, policy: str, face_type: str | None, workers: int, progress: bool
) -> list:
    """process_file over ``paths`` on ``workers`` processes, in order, with a progress bar."""
    from tqdm import tqdm

    # face_type is passed only when set, so process_file keeps its 3-argument call for plain indexes
    extra = () if face_type is None else (face_type,)
    import sys

    interactive = progress and sys.stderr.isatty()  # a bar on a terminal, one plain line in a log file
    if progress and paths and not interactive:
        print(f"indexing {len(paths)} files of {Path(paths[0]).parent}", file=sys.stderr, flush=True)
    bar = tqdm(total=len(paths), desc="indexing", unit="file", disable=not interactive or not paths)
    results: list = []
    if workers <= 1 or len(paths) < 32:
        for path in paths:
            results.append(process_file(path, resolution, policy, *extra))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the parent may hold torch / OpenMP threads that fork would copy in a broken state
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_thread) as pool:
            chunk = max(1, min(64, len(paths) // (workers * 8)))
            columns = [[resolution] * len(paths), [policy] * len(paths)] + [[e] * len(paths) for e in extra]
            for result in pool.map(process_file, paths, *columns, chunksize=chunk):
                results.append(result)
                bar.update()
    bar.close()
    return results


def _write_generation(
    family: Path,
    resolution: int,
    policy: str,
    face_type: str | None,
    rows: list[tuple[dict, object]],
    skipped: list[dict],
) -> Path:
    """Write a complete generation into a temp folder, fsync it, rename it to ``vNNNNNN``; return it.

    ``rows`` pairs each manifest entry with either an ``Indexed`` (new) or ``(old_index, row)`` (reused).
    """
    family.mkdir(parents=True, exist_ok=True)
    build = family / f".build-{uuid.uuid4().hex}"
    build.mkdir()  # not mkdtemp: its 0700 would hide the index from other users of a shared faceset
    count = len(rows)
    landmarks = np.full((count, 68, 2), np.nan, np.float32)
    recrop = np.full((count, 2, 3), np.nan, np.float32)
    # masks.npy is streamed with write(), not filled through a memory map: on a full disk a write to a
    # mapped page is a SIGBUS that kills the process, while write() raises ENOSPC (an error message)
    header = {"descr": "|u1", "fortran_order": False, "shape": (count, 2, resolution, resolution)}
    with open(build / "masks.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for i, (_, source) in enumerate(rows):
            if isinstance(source, Indexed):
                row_masks = source.masks
                if source.landmarks is not None and source.landmarks.shape == (68, 2):
                    landmarks[i] = source.landmarks
                if source.recrop is not None:
                    recrop[i] = source.recrop
            else:
                old, row = source
                row_masks = old.masks[row]
                landmarks[i] = old.landmarks[row]
                recrop[i] = old.recrop[row]
            handle.write(np.ascontiguousarray(row_masks, dtype=np.uint8).tobytes())
    with open(build / "landmarks.npy", "wb") as handle:
        np.save(handle, landmarks)
    with open(build / "recrop.npy", "wb") as handle:
        np.save(handle, recrop)
    from pipelines.yaw import estimate_yaws  # lazy: it needs torch, the rest of indexing does not

    with open(build / "yaw.npy", "wb") as handle:  # uniform-yaw sampling bins faces by head yaw
        np.save(handle, estimate_yaws(landmarks, np.array([e["image_size"] for e, _ in rows])))
    manifest = {
        "version": INDEX_VERSION,
        "resolution": resolution,
        "policy": policy,
        "face_type": face_type,
        "entries": [e for e, _ in rows],
    }
    (build / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (build / "skipped.json").write_text(json.dumps(skipped, indent=1), encoding="utf-8")
    for name in ("masks.npy", "landmarks.npy", "recrop.npy", "yaw.npy", "manifest.json", "skipped.json"):
        fsync_file(build / name)
    fsync_dir(build)
    numbers = [int(p.name[1:]) for p in family.glob("v[0-9]*") if p.name[1:].isdigit()]
    generation = family / f"v{max(numbers, default=0) + 1:06d}"
    os.rename(build, generation)  # a folder to a new name: atomic on POSIX and Windows
    return generation


def _remove_old(family: Path, keep: Path) -> None:
    """Drop superseded generations and crashed builds (readers that mmap'ed them keep their pages).

    On Windows a generation that a running reader still maps cannot be deleted; it stays (ignored by
    loaders, which follow ``CURRENT``) until a later build removes it.
    """
    for child in family.iterdir():
        if (
            child.is_dir()
            and child != keep
            and (child.name.startswith(".build-") or child.name.startswith("v"))
        ):
            shutil.rmtree(child, ignore_errors=True)


def _build_locked(
    root: Path,
    resolution: int,
    policy: str,
    face_type: str | None,
    workers: int,
    progress: bool,
    verify: bool,
    index_root: str | Path | None = None,
) -> BuildReport:
    old = _try_load(root, resolution, policy, face_type, index_root)
    old_entries = {} if old is None else {e["name"]: i for i, e in enumerate(old.entries)}
    old_skipped = {} if old is None else {s["name"]: s for s in old.skipped}
    unreadable: dict[str, str] = {}
    files = _scan(root, unreadable)
    reused: dict[str, object] = {}
    skipped: dict[str, dict] = {
        name: {"name": name, "reason": reason, "size": 0, "mtime_ns": 0}
        for name, reason in unreadable.items()
    }
    todo: list[str] = []
    for name, stat in files.items():
        if name in old_entries and _unchanged(old.entries[old_entries[name]], stat, root / name, verify):
            reused[name] = (old, old_entries[name])
        elif name in old_skipped and _unchanged(old_skipped[name], stat, root / name, False):
            skipped[name] = old_skipped[name]
        else:
            todo.append(name)
    if old is not None and not todo and len(reused) == len(old.entries) and len(skipped) == len(old.skipped):
        return BuildReport(old, processed=0, reused=len(reused))  # up to date: keep the live generation
    new: dict[str, Indexed] = {}
    for result in _run_jobs([str(root / n) for n in todo], resolution, policy, face_type, workers, progress):
        if isinstance(result, Indexed):
            new[result.entry["name"]] = result
        else:
            skipped[result.name] = {
                "name": result.name,
                "reason": result.reason,
                "size": result.size,
                "mtime_ns": result.mtime_ns,
            }
    rows = []
    for name in files:
        if name in new:
            rows.append((new[name].entry, new[name]))
        elif name in reused:
            old_index, row = reused[name]
            rows.append((old_index.entries[row], reused[name]))
    family = index_dir(root, resolution, policy, face_type, index_root)
    bad = [skipped[n] for n in sorted(skipped)]
    try:
        generation = _write_generation(family, resolution, policy, face_type, rows, bad)
        atomic_write_text(family / "CURRENT", generation.name + "\n")
    except OSError as exc:  # a full disk or a read-only folder: the live generation stays in use
        for build in family.glob(".build-*"):
            shutil.rmtree(build, ignore_errors=True)
        raise SideIndexError(
            f"{family}: cannot write the faceset index ({exc.strerror or exc}); the previous index is kept"
        ) from exc
    _remove_old(family, generation)
    report = BuildReport(
        load_index(root, resolution, policy, face_type, index_root), processed=len(todo), reused=len(reused)
    )
    return report


def build_index(
    root: str | Path,
    resolution: int,
    policy: str = "xseg",
    workers: int | None = None,
    progress: bool = True,
    verify: bool = False,
    face_type: str | None = None,
    index_root: str | Path | None = None,
) -> BuildReport:
    """Bring the side index up to date under the lock (a no-op that keeps the live generation when
    nothing changed) and report what was done. ``workers`` defaults to every core. ``face_type`` is
    the model's (``ModelConfig.face_type``): files of another face type are re-cropped to it.
    ``index_root`` moves the index out of the faceset (see ``sidecar_dir``); the faceset is only read."""
    root = Path(root)
    _check_args(root, resolution, policy, face_type)
    face_type = short_face_type(face_type)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(build_lock(root, index_root))
        except SideIndexError:
            # a read-only faceset whose owner built an up-to-date index: use it as it is
            current = _try_load(root, resolution, policy, face_type, index_root)
            if current is not None and not is_stale(root, resolution, policy, verify, face_type, index_root):
                return BuildReport(current, processed=0, reused=len(current))
            raise
        return _build_locked(root, resolution, policy, face_type, workers, progress, verify, index_root)


def ensure_index(root: str | Path, resolution: int, policy: str = "xseg", **options) -> FacesetIndex:
    """The up-to-date index, built first where the faceset changed; safe to call from every rank (the
    first rank on a node builds under the lock, the others wait and then find nothing to do).
    ``options`` are build_index's ``workers``, ``progress``, ``verify``, ``face_type`` and ``index_root``."""
    return build_index(root, resolution, policy, **options).index
