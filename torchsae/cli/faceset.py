"""Faceset commands: ``torchsae inspect`` and ``torchsae xseg get|set|clear``.

Why: users move between DeepFaceLab and TorchSAE with the same face JPEGs. ``inspect`` shows what a
file carries (and which files a faceset scan would reject, and why) without importing torch; ``xseg``
reads and writes the applied XSeg mask with DeepFaceLab's own encoding, through the atomic writer, so
a file stays readable by stock DeepFaceLab.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from torchsae.dfl.errors import DFLFormatError
from torchsae.dfl.meta import load_meta, set_xseg_mask
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_write_bytes

JPEG_SUFFIXES = (".jpg", ".jpeg")


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given; a folder stands for the JPEGs directly inside it, sorted by name."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in JPEG_SUFFIXES and p.is_file()))
        else:
            out.append(path)
    return out


def inspect_file(path: Path) -> dict[str, Any]:
    """One report row: {file, has_metadata, face_type, has_xseg, xseg_shape, landmarks, error}."""
    row: dict[str, Any] = {
        "file": str(path),
        "has_metadata": False,
        "face_type": None,
        "has_xseg": False,
        "xseg_shape": None,
        "landmarks": None,
        "error": None,
    }
    try:
        meta = load_meta(path)
        mask = meta.xseg_mask()
    except TorchSAEError as exc:
        row["error"] = str(exc)
        return row
    row["has_metadata"] = meta.has_metadata
    row["face_type"] = meta.face_type  # as stored; DeepFaceLab assumes full_face when it is missing
    row["has_xseg"] = mask is not None
    row["xseg_shape"] = list(mask.shape) if mask is not None else None
    row["landmarks"] = meta.landmarks.tolist() if meta.landmarks is not None else None
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns; the last one holds the landmark count, or why the file was rejected."""
    header = ("file", "metadata", "face_type", "xseg", "notes")
    lines = []
    for row in rows:
        if row["error"]:
            lines.append((row["file"], "REJECTED", "-", "-", row["error"]))
            continue
        xseg = "x".join(map(str, row["xseg_shape"][:2])) if row["has_xseg"] else "-"
        notes = f"{len(row['landmarks'])} landmarks" if row["landmarks"] else "no landmarks"
        lines.append(
            (row["file"], "yes" if row["has_metadata"] else "no", row["face_type"] or "-", xseg, notes)
        )
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*line).rstrip() for line in [header, *lines])


@click.command("inspect")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON list of per-file objects instead of a table.")
def inspect_cmd(files: tuple[Path, ...], as_json: bool) -> None:
    """Show the DeepFaceLab metadata of face JPEGs (files or folders of them).

    Exits 0 when every file was read and 1 when any was rejected; rejected files are still listed,
    with the reason.
    """
    paths = _expand(files)
    if not paths:
        raise click.UsageError("no JPEG files found in the given folder(s)")
    rows = [inspect_file(path) for path in paths]
    click.echo(json.dumps(rows, indent=2) if as_json else _table(rows))
    failed = sum(1 for row in rows if row["error"])
    if failed:
        if not as_json:
            click.echo(f"{failed} of {len(rows)} file(s) could not be read", err=True)
        raise SystemExit(1)


@click.group("xseg")
def xseg_group() -> None:
    """Read, write or remove the applied XSeg mask of a face JPEG (DeepFaceLab's encoding)."""


@xseg_group.command("get")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def xseg_get(file: Path, out: Path) -> None:
    """Write FILE's XSeg mask to OUT: .npy (float32 HxWx1, exactly as stored) or .png (8-bit gray)."""
    suffix = out.suffix.lower()
    if suffix not in (".npy", ".png"):
        raise TorchSAEError(f"{out}: output must end in .npy or .png")
    mask = load_meta(file).xseg_mask()
    if mask is None:
        raise DFLFormatError(f"{file}: has no XSeg mask")
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, mask, allow_pickle=False)
        atomic_write_bytes(out, buffer.getvalue())
    else:
        ok, png = cv2.imencode(".png", np.rint(mask[..., 0] * 255).astype(np.uint8))
        if not ok:  # pragma: no cover - OpenCV always encodes an 8-bit gray image
            raise TorchSAEError(f"{out}: PNG encoding failed")
        atomic_write_bytes(out, png.tobytes())
    click.echo(f"{file}: XSeg mask {mask.shape[0]}x{mask.shape[1]} written to {out}")


def read_mask_file(path: Path) -> np.ndarray:
    """A mask from .png (8/16-bit, first channel, scaled to [0, 1]) or .npy (float or bool, 2-D or HxWxC)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TorchSAEError(f"{path}: not a readable .npy array ({exc})") from exc
        if mask.dtype.kind not in "fb":
            raise TorchSAEError(f"{path}: mask dtype {mask.dtype} must be float in [0, 1] or bool")
    elif suffix == ".png":
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if image is None:
            raise TorchSAEError(f"{path}: not a readable PNG image")
        mask = image.astype(np.float32) / float(np.iinfo(image.dtype).max)
    else:
        raise TorchSAEError(f"{path}: mask must be a .png or .npy file")
    if mask.ndim not in (2, 3) or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise TorchSAEError(f"{path}: mask shape {mask.shape} is not (H, W) or (H, W, C)")
    return mask if mask.ndim == 2 else mask[..., 0]


@xseg_group.command("set")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("mask", type=click.Path(path_type=Path))
def xseg_set(file: Path, mask: Path) -> None:
    """Store MASK (.png or .npy, values in [0, 1]) as FILE's XSeg mask, as DeepFaceLab writes it."""
    values = read_mask_file(mask)
    if values.shape[0] != values.shape[1]:
        raise TorchSAEError(
            f"{mask}: mask of {values.shape[1]}x{values.shape[0]} pixels; XSeg masks are square like the face"
        )
    set_xseg_mask(file, values)
    click.echo(f"{file}: XSeg mask {values.shape[0]}x{values.shape[1]} stored")


@xseg_group.command("clear")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def xseg_clear(files: tuple[Path, ...]) -> None:
    """Remove the XSeg mask from each FILE (other metadata and the image are kept)."""
    for file in files:
        if not load_meta(file).has_xseg:
            click.echo(f"{file}: no XSeg mask, unchanged")
            continue
        set_xseg_mask(file, None)
        click.echo(f"{file}: XSeg mask removed")
