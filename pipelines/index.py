"""The CPU mask sidecar: a versioned, incremental, atomically replaced side index beside a faceset.

Why: DeepFaceLab decodes an XSeg PNG and draws landmark hulls at 512² for every sample of every step.
Those masks only change when a file changes, so we draw them once, at the working resolution, into a
memory-mappable ``uint8 [N, 2, R, R]`` array (channel 0 full face, channel 1 eyes+mouth) that every
loader rank shares through the page cache.

Layout (``DIR/.torchsae/``)::

    lock                         fcntl lock: one builder per node, the others wait then load
    index_r128_xseg/CURRENT      names the live generation; replaced atomically (the commit point)
    index_r128_xseg/v000003/     manifest.json, masks.npy, landmarks.npy, skipped.json
    index_r128_xseg/.build-*/    a build in progress (or one that crashed: removed by the next build)

A build writes a complete new generation, fsyncs it, then swaps ``CURRENT``; a crash at any point
leaves the previous generation live. Entries whose size and mtime are unchanged are copied from the
previous generation; ``verify=True`` also re-reads each file's metadata digest (for tools that keep
mtimes). Only added or changed files are decoded. The faceset's own files are only ever read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.index_scan import (
    JPEG_SUFFIXES,
    OTHER_IMAGE_SUFFIXES,
    Indexed,
    metadata_digest,
    process_file,
)
from torchsae.config import MASK_POLICIES
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_write_text

INDEX_VERSION = 1
SIDECAR = ".torchsae"


class SideIndexError(TorchSAEError):
    """The side index cannot be built or loaded."""


@dataclass
class FacesetIndex:
    """A loaded side index. Row ``i`` of every array belongs to ``files[i]``.

    ``landmarks`` are in the file's own pixel coordinates (``image_sizes[i]`` wide), NaN where a file
    has none; ``masks`` is a read-only memmap.
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


def index_dir(root: str | Path, resolution: int, policy: str) -> Path:
    """The folder that holds every generation of one (resolution, policy) index."""
    return Path(root) / SIDECAR / f"index_r{resolution}_{policy}"


@contextlib.contextmanager
def build_lock(root: str | Path) -> Iterator[None]:
    """Exclusive per-faceset lock; under torchrun one rank per node builds while the others block here."""
    sidecar = Path(root) / SIDECAR
    try:
        sidecar.mkdir(exist_ok=True)
        handle = open(sidecar / "lock", "a+b")  # noqa: SIM115 - held for the with-block
    except OSError as exc:
        raise SideIndexError(f"{sidecar}: cannot create the side index folder ({exc.strerror})") from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _check_args(root: Path, resolution: int, policy: str) -> None:
    if not root.is_dir():
        raise SideIndexError(f"{root}: not a folder of face images")
    if policy not in MASK_POLICIES:
        raise SideIndexError(f"mask policy {policy!r}: must be one of {', '.join(MASK_POLICIES)}")
    if resolution < 16:
        raise SideIndexError(f"resolution {resolution}: must be at least 16")


def load_index(root: str | Path, resolution: int, policy: str = "xseg") -> FacesetIndex:
    """Load the live generation; raise SideIndexError if there is none (run ``torchsae index``)."""
    root = Path(root)
    family = index_dir(root, resolution, policy)
    try:
        generation = family / (family / "CURRENT").read_text().strip()
        manifest = json.loads((generation / "manifest.json").read_text())
        skipped = json.loads((generation / "skipped.json").read_text())
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
    if count:
        masks = np.load(generation / "masks.npy", mmap_mode="r")
        landmarks = np.load(generation / "landmarks.npy")
    else:
        masks = np.zeros((0, 2, resolution, resolution), np.uint8)
        landmarks = np.zeros((0, 68, 2), np.float32)
    if masks.shape != (count, 2, resolution, resolution) or landmarks.shape[0] != count:
        raise SideIndexError(
            f"{generation}: masks.npy or landmarks.npy does not match the manifest; rebuild it"
        )
    return FacesetIndex(
        root, resolution, policy, generation, [e["name"] for e in entries], entries, masks, landmarks, skipped
    )


def _try_load(root: Path, resolution: int, policy: str) -> FacesetIndex | None:
    try:
        return load_index(root, resolution, policy)
    except SideIndexError:
        return None


def _scan(root: Path) -> dict[str, os.stat_result]:
    """Candidate files at the top level of the faceset (DeepFaceLab does not recurse either)."""
    found = {}
    for entry in os.scandir(root):
        suffix = Path(entry.name).suffix.lower()
        if entry.name.startswith(".") or suffix not in JPEG_SUFFIXES | OTHER_IMAGE_SUFFIXES:
            continue
        if entry.is_file():
            found[entry.name] = entry.stat()
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


def is_stale(root: str | Path, resolution: int, policy: str, verify: bool = False) -> bool:
    """Whether the faceset changed since the live index was built (or there is none)."""
    root = Path(root)
    current = _try_load(root, resolution, policy)
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


def _run_jobs(paths: list[str], resolution: int, policy: str, workers: int, progress: bool) -> list:
    """process_file over ``paths`` on ``workers`` processes, in order, with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(paths), desc="indexing", unit="file", disable=not progress or not paths)
    results: list = []
    if workers <= 1 or len(paths) < 32:
        for path in paths:
            results.append(process_file(path, resolution, policy))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the parent may hold torch / OpenMP threads that fork would copy in a broken state
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_thread) as pool:
            chunk = max(1, min(64, len(paths) // (workers * 8)))
            for result in pool.map(
                process_file, paths, [resolution] * len(paths), [policy] * len(paths), chunksize=chunk
            ):
                results.append(result)
                bar.update()
    bar.close()
    return results


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_generation(
    family: Path, resolution: int, policy: str, rows: list[tuple[dict, object]], skipped: list[dict]
) -> Path:
    """Write a complete generation into a temp folder, fsync it, rename it to ``vNNNNNN``; return it.

    ``rows`` pairs each manifest entry with either an ``Indexed`` (new) or ``(old_index, row)`` (reused).
    """
    family.mkdir(parents=True, exist_ok=True)
    build = family / f".build-{uuid.uuid4().hex}"
    build.mkdir()  # not mkdtemp: its 0700 would hide the index from other users of a shared faceset
    count = len(rows)
    masks = np.lib.format.open_memmap(
        build / "masks.npy", mode="w+", dtype=np.uint8, shape=(count, 2, resolution, resolution)
    )
    landmarks = np.full((count, 68, 2), np.nan, np.float32)
    for i, (_, source) in enumerate(rows):
        if isinstance(source, Indexed):
            masks[i] = source.masks
            if source.landmarks is not None and source.landmarks.shape == (68, 2):
                landmarks[i] = source.landmarks
        else:
            old, row = source
            masks[i] = old.masks[row]
            landmarks[i] = old.landmarks[row]
    masks.flush()
    del masks
    with open(build / "landmarks.npy", "wb") as handle:
        np.save(handle, landmarks)
    from pipelines.yaw import estimate_yaws  # lazy: it needs torch, the rest of indexing does not

    with open(build / "yaw.npy", "wb") as handle:  # uniform-yaw sampling bins faces by head yaw
        np.save(handle, estimate_yaws(landmarks, np.array([e["image_size"] for e, _ in rows])))
    manifest = {
        "version": INDEX_VERSION,
        "resolution": resolution,
        "policy": policy,
        "entries": [e for e, _ in rows],
    }
    (build / "manifest.json").write_text(json.dumps(manifest))
    (build / "skipped.json").write_text(json.dumps(skipped, indent=1))
    for name in ("masks.npy", "landmarks.npy", "yaw.npy", "manifest.json", "skipped.json"):
        _fsync(build / name)
    _fsync(build)
    numbers = [int(p.name[1:]) for p in family.glob("v[0-9]*") if p.name[1:].isdigit()]
    generation = family / f"v{max(numbers, default=0) + 1:06d}"
    os.rename(build, generation)
    return generation


def _remove_old(family: Path, keep: Path) -> None:
    """Drop superseded generations and crashed builds (readers that mmap'ed them keep their pages)."""
    for child in family.iterdir():
        if (
            child.is_dir()
            and child != keep
            and (child.name.startswith(".build-") or child.name.startswith("v"))
        ):
            shutil.rmtree(child, ignore_errors=True)


def _build_locked(
    root: Path, resolution: int, policy: str, workers: int, progress: bool, verify: bool
) -> BuildReport:
    old = _try_load(root, resolution, policy)
    old_entries = {} if old is None else {e["name"]: i for i, e in enumerate(old.entries)}
    old_skipped = {} if old is None else {s["name"]: s for s in old.skipped}
    files = _scan(root)
    reused: dict[str, object] = {}
    skipped: dict[str, dict] = {}
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
    for result in _run_jobs([str(root / n) for n in todo], resolution, policy, workers, progress):
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
    family = index_dir(root, resolution, policy)
    generation = _write_generation(family, resolution, policy, rows, [skipped[n] for n in sorted(skipped)])
    atomic_write_text(family / "CURRENT", generation.name + "\n")
    _remove_old(family, generation)
    return BuildReport(load_index(root, resolution, policy), processed=len(todo), reused=len(reused))


def build_index(
    root: str | Path,
    resolution: int,
    policy: str = "xseg",
    workers: int | None = None,
    progress: bool = True,
    verify: bool = False,
) -> BuildReport:
    """Bring the side index up to date under the lock (a no-op that keeps the live generation when
    nothing changed) and report what was done. ``workers`` defaults to every core."""
    root = Path(root)
    _check_args(root, resolution, policy)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    with build_lock(root):
        return _build_locked(root, resolution, policy, workers, progress, verify)


def ensure_index(root: str | Path, resolution: int, policy: str = "xseg", **options) -> FacesetIndex:
    """The up-to-date index, built first where the faceset changed; safe to call from every rank (the
    first rank on a node builds under the lock, the others wait and then find nothing to do).
    ``options`` are build_index's ``workers``, ``progress`` and ``verify``."""
    return build_index(root, resolution, policy, **options).index
