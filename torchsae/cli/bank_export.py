"""``compose``: join an encoder part and a decoder part (ONNX files) into one swap ``.onnx`` / ``.dfm``.

A standalone ``click.command``: the lead wires it into the ``torchsae bank`` group. It takes plain
part files (``torchsae.export.parts.export_encoder_onnx`` / ``export_decoder_onnx`` write them), so it
does not depend on the bank's on-disk format. Heavy modules load only when it runs.
"""

from __future__ import annotations

from pathlib import Path

import click

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("compose")
@click.option("--encoder-onnx", type=_FILE, required=True, help="Encoder part (face -> code).")
@click.option("--decoder-onnx", type=_FILE, required=True, help="Decoder part of the identity rendered in.")
@click.option("--face-decoder-onnx", type=_FILE, help="Input identity's decoder part; gives the face mask.")
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Swap .onnx / .dfm."
)
@click.option(
    "--layout", type=click.Choice(["torchsae", "dfm"]), help="[default: dfm for .dfm, else torchsae]"
)
def compose_cmd(
    encoder_onnx: Path, decoder_onnx: Path, face_decoder_onnx: Path | None, output: Path, layout: str | None
) -> None:
    """Join two part ONNX files that share one latent into one verified swap graph."""
    from torchsae.export.parts import compose_onnx

    layout = layout or ("dfm" if output.suffix.lower() == ".dfm" else "torchsae")
    result = compose_onnx(
        encoder_onnx, decoder_onnx, output, layout=layout, face_decoder_path=face_decoder_onnx
    )
    click.echo(
        f"wrote {result.path} (layout {result.layout}, opset {result.opset}, {result.size_bytes / 1e6:.1f} MB, "
        f"latent {result.metadata['latent_id']}; max |diff| vs the parts {result.report.max_diff:.1e})"
    )
