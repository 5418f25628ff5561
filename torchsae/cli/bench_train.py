"""``torchsae bench train``: throughput of the training step (see ``torchsae.train.bench``)."""

from __future__ import annotations

import json

import click

from torchsae.cli.options import config_options, model_size_option


# The config fields' options (torchsae.config): archi, resolution and the dims override --model-size's
# preset (None: not given); batch size, amp, compile, device, backend and workers have the field's
# default (concrete: no --config to layer).
@click.command("train")
@model_size_option()
@config_options("bench train", sections=("model",))
@config_options("bench train", concrete=True, sections=("data", "train"))
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps first (compilation).")
@click.option(
    "--channels-last/--no-channels-last", default=True, show_default=True, help="NHWC weights on CUDA."
)
@click.option("--end-to-end", is_flag=True, help="Feed every step from the real pipeline (needs --data-dir).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Faceset for --end-to-end: a folder with A/ and B/, or one folder used for both sides.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_train_cmd(
    model_size: str | None,
    archi: str | None,
    resolution: int | None,
    ae_dims: int | None,
    e_dims: int | None,
    d_dims: int | None,
    d_mask_dims: int | None,
    batch_size: int,
    steps: int,
    warmup: int,
    amp: str,
    compile: bool,
    device: str,
    channels_last: bool,
    end_to_end: bool,
    data_dir: str | None,
    backend: str,
    workers: int,
    as_json: bool,
) -> None:
    """Milliseconds per training step, samples/s, FLOPs per step, MFU and peak memory.

    By default every step reuses one synthetic batch held in device memory, so the data path is
    excluded; --end-to-end --data-dir DIR feeds the steps from the real pipeline instead.
    """
    from torchsae.cli.info import build_model_config
    from torchsae.config import preset
    from torchsae.train.bench import bench_train, format_result

    if end_to_end != (data_dir is not None):
        raise click.UsageError("--end-to-end and --data-dir go together")
    if steps < 1 or batch_size < 1 or warmup < 0:
        raise click.UsageError("--steps and --batch-size must be >= 1, --warmup >= 0")
    if model_size and resolution and resolution != preset(int(model_size)).resolution:
        raise click.UsageError(f"--resolution {resolution} contradicts --model-size {model_size}")
    dims = {"ae_dims": ae_dims, "e_dims": e_dims, "d_dims": d_dims, "d_mask_dims": d_mask_dims}
    model = build_model_config(int(model_size) if model_size else None, archi, resolution, dims)
    result = bench_train(
        model,
        batch_size,
        steps,
        amp=amp,
        compile=compile,
        device=device,
        warmup=warmup,
        data_dir=data_dir,
        backend=backend,
        workers=workers,
        channels_last=channels_last,
    )
    click.echo(json.dumps(result, indent=1) if as_json else format_result(result))
