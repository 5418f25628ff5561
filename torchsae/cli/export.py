"""``torchsae export`` (checkpoint -> verified ONNX / .dfm) and ``torchsae build-engine`` (ONNX -> TensorRT).

Why two commands: the ONNX file is portable (ONNX Runtime, DeepFaceLive, any GPU); a TensorRT engine
is tied to one GPU model and TensorRT version, so it is built where it will run.
"""

from __future__ import annotations

from pathlib import Path

import click

from torchsae.config import EXPORT_LAYOUTS
from torchsae.errors import TorchSAEError


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
    help="ONNX file to write (.onnx, or .dfm for DeepFaceLive).",
)
@click.option("--model-size", type=int, default=None, help="Expected resolution; must match the checkpoint.")
@click.option("--opset", type=int, default=None, help="ONNX opset, 17 (default) or newer.")
@click.option(
    "--layout",
    type=click.Choice(EXPORT_LAYOUTS),
    default=None,
    help="torchsae: NCHW 'face'; dfm: DeepFaceLive's NHWC 'in_face'.",
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

    Options not given fall back to the checkpoint config's export section (opset 17, layout torchsae,
    fp32). Nothing is written unless ONNX Runtime matches PyTorch (1e-4 for fp32, 1e-2 for fp16).
    """
    from torchsae.export.onnx import export_onnx
    from torchsae.export.source import load_model_for_export
    from torchsae.export.verify import load_faces

    check_output_path(output)  # before the minutes of export: a path that cannot be written is one line
    model, config, step = load_model_for_export(checkpoint, model_size)
    opset = opset if opset is not None else config.export.opset
    layout = layout or config.export.layout
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
