"""``torchsae index`` and ``torchsae bench data``: the data-pipeline commands.

Why ``index`` is a command of its own: the training ranks build a missing or stale index themselves,
but building it ahead of time on a CPU box (all cores, progress bar, the list of unusable files)
means a GPU job never waits on mask drawing and the user sees bad files before training starts.
"""

from __future__ import annotations

import json
import os

import click

from torchsae.config import FACE_TYPES, MASK_POLICIES, ModelConfig


@click.command("index")
@click.argument("data_dir", type=click.Path(file_okay=False, dir_okay=True, exists=True))
@click.option("--resolution", "-r", type=int, default=128, show_default=True, help="Training resolution R.")
@click.option(
    "--mask-policy",
    type=click.Choice(MASK_POLICIES),
    default="xseg",
    show_default=True,
    help="xseg: XSeg mask, else landmark hull; hull: always the hull; full: whole image; require: XSeg only.",
)
@click.option("--workers", "-j", type=int, default=None, help="Worker processes [default: all cores].")
@click.option(
    "--verify",
    is_flag=True,
    help="Also re-read every file's metadata digest (catches edits that kept mtimes).",
)
@click.option(
    "--face-type",
    type=click.Choice(FACE_TYPES),
    default=ModelConfig().face_type,
    show_default=True,
    help="The model's face type (as train --face-type); files of another type are re-cropped to it.",
)
@click.option(
    "--index-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the index here instead of DATA_DIR/.torchsae (read-only facesets); train needs the same "
    "--index-dir. Default: $TORCHSAE_INDEX_DIR, else DATA_DIR/.torchsae.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index_cmd(
    data_dir: str,
    resolution: int,
    mask_policy: str,
    workers: int | None,
    verify: bool,
    face_type: str,
    index_dir: str | None,
    quiet: bool,
) -> None:
    """Scan DATA_DIR and (re)build its side index of masks at RESOLUTION, incrementally.

    Writes DATA_DIR/.torchsae/ (or a folder under --index-dir); the face images themselves are never
    modified. Files that cannot be used are listed with the reason, and training never sees them.
    """
    from pipelines.index import build_index

    report = build_index(
        data_dir,
        resolution,
        mask_policy,
        workers=workers,
        progress=not quiet,
        verify=verify,
        face_type=face_type,
        index_root=index_dir,
    )
    for skipped in report.index.skipped[:20]:
        click.echo(f"  skipped {skipped['name']}: {skipped['reason']}", err=True)
    if len(report.index.skipped) > 20:
        click.echo(f"  ... and {len(report.index.skipped) - 20} more", err=True)
    click.echo(f"{report.summary()}; {report.processed} processed, {report.reused} unchanged")


@click.command("data")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, dir_okay=True, exists=True))
@click.option("--resolution", "-r", type=int, default=128, show_default=True)
@click.option(
    "--backend",
    type=click.Choice(("torch", "dali")),
    default="torch",
    show_default=True,
    help="The DeepFaceLab-style baseline runs in benchmarks/data_throughput.py, beside both backends.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Loader workers for the whole-machine figure [default: all cores].",
)
@click.option("--seconds", type=float, default=5.0, show_default=True, help="Time per measured stage.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--mask-policy", type=click.Choice(MASK_POLICIES), default="xseg", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_data_cmd(
    data_dir: str,
    resolution: int,
    backend: str,
    workers: int | None,
    seconds: float,
    batch_size: int,
    mask_policy: str,
    as_json: bool,
) -> None:
    """Samples per second per core of one side's data path (warped + target + both masks).

    decode_ceiling_per_core: JPEG decode alone at the scale the backend uses;
    host_samples_per_s_per_core: decode + masks from the index + collation (what feeds a GPU);
    full_samples_per_s_per_core: the complete CPU path, augmentation included.
    """
    from pipelines.bench import format_result, measure

    result = measure(
        data_dir,
        resolution,
        backend,
        seconds=seconds,
        batch_size=batch_size,
        workers=workers if workers is not None else (os.cpu_count() or 1),
        policy=mask_policy,
    )
    click.echo(json.dumps(result, indent=1) if as_json else format_result(result))
