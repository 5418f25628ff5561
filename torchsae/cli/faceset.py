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
    """One report row: {file, has_metadata, face_type, has_xseg, xseg_shape, xseg_polygons,
    polygons_not_applied, landmarks, error}.

    ``xseg_polygons`` counts the XSeg editor's polygons (``seg_ie_polys``); ``polygons_not_applied``
    is true when a face has polygons but no applied XSeg mask (labelled, never trained/applied), so
    training would fall back to the landmark hull for it.
    """
    row: dict[str, Any] = {
        "file": str(path),
        "has_metadata": False,
        "face_type": None,
        "has_xseg": False,
        "xseg_shape": None,
        "xseg_polygons": 0,
        "polygons_not_applied": False,
        "landmarks": None,
        "error": None,
    }
    try:
        meta = load_meta(path)
        mask = meta.xseg_mask()
        polygons = len(meta.ie_polys())
    except TorchSAEError as exc:
        row["error"] = str(exc)
        return row
    row["has_metadata"] = meta.has_metadata
    row["face_type"] = meta.face_type  # as stored; DeepFaceLab assumes full_face when it is missing
    row["has_xseg"] = mask is not None
    row["xseg_shape"] = list(mask.shape) if mask is not None else None
    row["xseg_polygons"] = polygons
    row["polygons_not_applied"] = polygons > 0 and mask is None
    row["landmarks"] = meta.landmarks.tolist() if meta.landmarks is not None else None
    return row


def inspect_totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts for the closing line: files, with XSeg, without metadata, rejected, polygons not applied."""
    return {
        "files": len(rows),
        "with_xseg": sum(1 for r in rows if r["has_xseg"]),
        "without_metadata": sum(1 for r in rows if not r["error"] and not r["has_metadata"]),
        "rejected": sum(1 for r in rows if r["error"]),
        "polygons_not_applied": sum(1 for r in rows if r["polygons_not_applied"]),
    }


def totals_line(totals: dict[str, int]) -> str:
    return (
        f"total: {totals['files']} files, {totals['with_xseg']} with XSeg, "
        f"{totals['without_metadata']} without DeepFaceLab metadata, {totals['rejected']} rejected, "
        f"{totals['polygons_not_applied']} with XSeg polygons never applied"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns; the last one holds the landmark count, or why the file was rejected."""
    header = ("file", "metadata", "face_type", "xseg", "notes")
    lines = []
    for row in rows:
        if row["error"]:
            lines.append((row["file"], "REJECTED", "-", "-", row["error"]))
            continue
        xseg = "x".join(map(str, row["xseg_shape"][:2])) if row["has_xseg"] else "-"
        if not row["has_metadata"]:
            notes = "no DeepFaceLab metadata: not an aligned face (training skips it)"
        else:
            notes = f"{len(row['landmarks'])} landmarks" if row["landmarks"] else "no landmarks"
        if row["polygons_not_applied"]:
            notes += f"; {row['xseg_polygons']} XSeg polygons never applied (the hull is used)"
        elif row["xseg_polygons"]:
            notes += f"; {row['xseg_polygons']} XSeg polygons"
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
    """Show the DeepFaceLab metadata of face JPEGs (files or folders of them), then a totals line.

    Exits 0 when every file is a readable DeepFaceLab face and 1 when any was rejected or has no
    DeepFaceLab metadata (training skips both); those files are still listed, with the reason. Faces
    whose XSeg polygons were labelled but never applied are flagged (training uses their hull).
    """
    paths = _expand(files)
    if not paths:
        raise click.UsageError("no JPEG files found in the given folder(s)")
    rows = [inspect_file(path) for path in paths]
    totals = inspect_totals(rows)
    click.echo(json.dumps(rows, indent=2) if as_json else _table(rows) + "\n" + totals_line(totals))
    problems = totals["rejected"] + totals["without_metadata"]
    if problems:
        if not as_json:
            click.echo(
                f"{problems} of {len(rows)} file(s) unusable: {totals['rejected']} could not be read, "
                f"{totals['without_metadata']} have no DeepFaceLab metadata",
                err=True,
            )
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
    meta = load_meta(file)
    if not meta.has_metadata:
        raise DFLFormatError(
            f"{file}: has no DeepFaceLab metadata (a plain JPEG, not an aligned face), so no XSeg mask"
        )
    mask = meta.xseg_mask()
    if mask is None:
        hint = " (its XSeg polygons were never applied)" if meta.seg_ie_polys else ""
        raise DFLFormatError(f"{file}: has no XSeg mask{hint}")
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
