"""``torchsae export`` (checkpoint -> verified ONNX / .dfm) and ``torchsae build-engine`` (ONNX -> TensorRT).

Why two commands: the ONNX file is portable (ONNX Runtime, DeepFaceLive, any GPU); a TensorRT engine
is tied to one GPU model and TensorRT version, so it is built where it will run.
"""

from __future__ import annotations

from pathlib import Path

import click

from torchsae.config import DEFAULT_OPSET, EXPORT_LAYOUTS, ExportConfig
from torchsae.errors import TorchSAEError
from torchsae.export.errors import ExportError

ONNX_SUFFIXES = (".onnx", ".dfm")


def resolve_output(checkpoint: Path, output: Path, layout: str | None) -> str | None:
    """Check ``--output`` and return the layout its suffix implies (``.dfm`` -> dfm), or ``layout``.

    Only ``.onnx`` and ``.dfm`` files are written; ``.dfm`` with an explicit ``--layout torchsae`` is a
    contradiction. An output that is the checkpoint itself, or an existing file that is not an ONNX
    model, is refused: an export must never overwrite a checkpoint or other data.
    """
    suffix = output.suffix.lower()
    if suffix not in ONNX_SUFFIXES:
        raise ExportError(
            f"{output}: the output must end in .onnx or .dfm (DeepFaceLive), not {suffix or 'nothing'!r}"
        )
    if suffix == ".dfm":
        if layout == "torchsae":
            raise ExportError(
                f"{output}: a .dfm is DeepFaceLive's layout; drop --layout torchsae or write a .onnx"
            )
        layout = "dfm"
    if output.exists():
        if checkpoint.exists() and output.resolve() == checkpoint.resolve():
            raise ExportError(f"{output}: this is the checkpoint being exported; choose another --output")
        if not output.is_file() or not _looks_like_onnx(output):
            raise ExportError(f"{output}: exists and is not an ONNX model; refusing to overwrite it")
    return layout


def _looks_like_onnx(path: Path) -> bool:
    """Whether ``path`` starts like a serialized ONNX ModelProto (field 1, ir_version, as a varint).

    A torch checkpoint starts with ``PK`` (zip) or a pickle opcode, a YAML or text file with a
    printable character; ONNX writers serialize fields in order, so a model starts with 0x08.
    """
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x08"


def resolve_opset(opset: int | None, layout: str, export_cfg: ExportConfig) -> int:
    """``--opset``, else the config's opset if it was chosen for this layout, else the layout's default."""
    if opset is not None:
        return opset
    if export_cfg.layout == layout and export_cfg.opset is not None:
        return export_cfg.opset
    return DEFAULT_OPSET[layout]


@click.command("export")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TorchSAE checkpoint (models/last.pth).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="ONNX file to write: .onnx, or .dfm (selects --layout dfm, for DeepFaceLive).",
)
@click.option("--model-size", type=int, default=None, help="Expected resolution; must match the checkpoint.")
@click.option(
    "--opset",
    type=int,
    default=None,
    help="ONNX opset. torchsae: 17 (default) or newer; dfm: 12 (default, as DeepFaceLab) to 16.",
)
@click.option(
    "--layout",
    type=click.Choice(EXPORT_LAYOUTS),
    default=None,
    help="torchsae: NCHW 'face'; dfm: DeepFaceLive's NHWC 'in_face:0' (default for a .dfm output).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16"]),
    default=None,
    help="Graph precision (inputs and outputs stay float32).",
)
@click.option(
    "--verify-faces",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Faceset folder whose faces verify the export (default: the checkpoint's data_dir_a if present).",
)
def export_cmd(
    checkpoint: Path,
    output: Path,
    model_size: int | None,
    opset: int | None,
    layout: str | None,
    dtype: str | None,
    verify_faces: Path | None,
) -> None:
    """Export Encoder + Inter + Decoder B (A face in, B identity out) to ONNX, verified with ONNX Runtime.

    Options not given fall back to the checkpoint config's export section (layout torchsae, fp32)
    and the layout's opset (torchsae 17; dfm 12, at most 16 since DeepFaceLive's ONNX Runtime 1.11
    reads no newer). A .dfm output selects the dfm layout. Nothing is written unless ONNX Runtime
    matches PyTorch (1e-4 for fp32, 1e-2 for fp16).
    """
    from torchsae.export.onnx import export_onnx
    from torchsae.export.source import load_model_for_export
    from torchsae.export.verify import load_faces

    check_output_path(output)  # before the minutes of export: a path that cannot be written is one line
    layout = resolve_output(checkpoint, output, layout)
    model, config, step = load_model_for_export(checkpoint, model_size)
    layout = layout or config.export.layout
    opset = resolve_opset(opset, layout, config.export)
    dtype = dtype or config.export.dtype
    faces_dir = verify_faces
    if faces_dir is None and config.data.data_dir_a and Path(config.data.data_dir_a).is_dir():
        faces_dir = Path(config.data.data_dir_a)
    faces = load_faces(faces_dir, config.model.resolution) if faces_dir is not None else None
    try:
        result = export_onnx(
            model, output, config.model, layout=layout, opset=opset, dtype=dtype, step=step, faces=faces
        )
    except OSError as exc:
        raise TorchSAEError(
            f"{exc.filename or output}: cannot write the export ({exc.strerror or exc})"
        ) from exc
    click.echo(
        f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB): {config.model.archi} "
        f"{config.model.resolution}px, layout {layout}, {dtype}, opset {opset} ({result.exporter} exporter), step {step}"
    )
    if result.external_data:
        click.echo(
            f"over 2 GiB: weights are in {result.path.name}.data, which must stay next to {result.path.name}"
        )
    click.echo(f"verified with ONNX Runtime against PyTorch (tolerance {result.report.tolerance:.0e}):")
    click.echo(result.report.summary())
    if faces is None:
        click.echo("note: no faces found to verify on (pass --verify-faces DIR); checked random inputs only")


def check_output_path(output: Path) -> None:
    """A one-line error when ``output`` is a folder or lies under a file."""
    if output.is_dir():
        raise TorchSAEError(f"{output}: is a folder; give the file name to write")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TorchSAEError(f"{output}: {parent} is a file, not a folder")
            break


@click.command("build-engine")
@click.option(
    "--onnx",
    "onnx_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Exported ONNX file.",
)
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Engine file to write."
)
@click.option("--min-batch", type=int, default=1, show_default=True)
@click.option("--opt-batch", type=int, default=1, show_default=True)
@click.option("--max-batch", type=int, default=8, show_default=True)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Timing cache to read and update.",
)
@click.option("--fp16", is_flag=True, help="TensorRT 10 only: allow fp16 kernels for an fp32 graph.")
@click.option("--workspace-gib", type=float, default=None, help="Builder workspace limit in GiB.")
@click.option(
    "--tolerance", type=float, default=None, help="Max abs difference allowed against ONNX Runtime."
)
@click.pass_context
def build_engine_cmd(
    ctx: click.Context,
    onnx_path: Path,
    output: Path,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    timing_cache: Path | None,
    fp16: bool,
    workspace_gib: float | None,
    tolerance: float | None,
) -> None:
    """Build a TensorRT engine (dynamic batch profile) and verify it against ONNX Runtime.

    Exits with code 2 and one line when TensorRT or a CUDA GPU is missing.
    """
    from torchsae.export.tensorrt import build_engine, missing_requirements

    missing = missing_requirements()
    if missing:
        click.echo(f"Error: {missing}", err=True)
        ctx.exit(2)
    result = build_engine(
        onnx_path,
        output,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        timing_cache=timing_cache,
        fp16=fp16,
        workspace_gib=workspace_gib,
        tolerance=tolerance,
    )
    click.echo(
        f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB): TensorRT {result.tensorrt_version}, "
        f"{result.precision}, batch profile {result.profile}"
    )
    click.echo(f"verified against ONNX Runtime (tolerance {result.tolerance:.0e}):")
    for name, per_output in result.diffs.items():
        click.echo(f"{name}: max |diff| {max(per_output.values()):.2e}")
