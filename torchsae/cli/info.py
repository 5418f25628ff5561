"""``torchsae info model``: parameter counts and fp32 size of a SAEHD configuration;
``torchsae info checkpoint FILE|RUN_DIR``: what a checkpoint holds and which ones a run folder keeps.

Why a command: choosing archi, resolution and dims is a memory trade-off (LIAE's inters grow with
res²), and users want the numbers before they start a run. Counting uses the meta device, so it is
instant and allocates nothing even for the largest models. A checkpoint is memory-mapped, not read.
"""

from __future__ import annotations

import dataclasses
import json

import click

from torchsae.cli.options import config_options, model_size_option
from torchsae.config import ModelConfig, preset

_MIB = 1024 * 1024

# Rows after the model family's own (its declared count_rows); keys absent from the counts are skipped.
_ROWS = (
    ("total", "total (autoencoder)"),
    ("code_discriminator", "code discriminator (true_face_power)"),
    ("unet_patch_discriminator", "U-Net patch discriminator (gan_power)"),
)
_DISCRIMINATORS = ("code_discriminator", "unet_patch_discriminator")


def build_model_config(
    model_size: int | None,
    archi: str | None,
    resolution: int | None,
    dims: dict[str, int | None],
) -> ModelConfig:
    """Start from the ``--model-size`` preset (or the defaults) and apply the options given."""
    base = preset(model_size) if model_size is not None else ModelConfig()
    overrides = {key: value for key, value in dims.items() if value is not None}
    if archi is not None:
        overrides["archi"] = archi
    if resolution is not None:
        overrides["resolution"] = resolution
    cfg = dataclasses.replace(base, **overrides)
    cfg.validate()
    return cfg


def model_info(cfg: ModelConfig) -> dict:
    """The JSON document ``info model --json`` prints: the resolved shape and the counts."""
    from torchsae.models.counts import param_counts  # torch import only when counting

    counts = param_counts(cfg)
    return {
        "model": {
            "archi": cfg.archi,
            "resolution": cfg.resolution,
            "ae_dims": cfg.ae_dims,
            "e_dims": cfg.resolved_e_dims,
            "d_dims": cfg.resolved_d_dims,
            "d_mask_dims": cfg.resolved_d_mask_dims,
            "lowest_dense_res": cfg.lowest_dense_res,
            "gan_patch_size": cfg.resolved_gan_patch_size,
            "gan_dims": cfg.gan_dims,
        },
        "params": counts,
        "fp32_mib": round(counts["fp32_bytes"] / _MIB, 1),
    }


def format_table(info: dict) -> str:
    """A plain-text table of ``model_info`` for the terminal."""
    m, counts = info["model"], info["params"]
    lines = [
        f"SAEHD {m['archi']} @ {m['resolution']} px: ae {m['ae_dims']}, e {m['e_dims']}, d {m['d_dims']}, "
        f"d_mask {m['d_mask_dims']}, lowest dense res {m['lowest_dense_res']}",
        f"{'network':<40}{'parameters':>14}{'fp32 MiB':>11}",
    ]
    family = ModelConfig(archi=m["archi"]).family
    for key, label in family.count_rows + _ROWS:
        if key in counts:
            if key == next(k for k in _DISCRIMINATORS if k in counts):
                lines.append("optional discriminators (not in the total):")
            lines.append(f"{label:<40}{counts[key]:>14,}{counts[key] * 4 / _MIB:>11.1f}")
    return "\n".join(lines)


@click.group("info")
def info() -> None:
    """Information about models (sizes, parameter counts) and checkpoints."""


@info.command("model")
@model_size_option("Start from this preset (its archi, resolution and dims; the options override them).")
@config_options("info model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def model_cmd(
    model_size: str | None,
    archi: str | None,
    resolution: int | None,
    ae_dims: int | None,
    e_dims: int | None,
    d_dims: int | None,
    d_mask_dims: int | None,
    gan_patch_size: int | None,
    gan_dims: int | None,
    as_json: bool,
) -> None:
    """Parameter counts per network and fp32 size of a SAEHD configuration."""
    dims = {
        "ae_dims": ae_dims,
        "e_dims": e_dims,
        "d_dims": d_dims,
        "d_mask_dims": d_mask_dims,
        "gan_patch_size": gan_patch_size,
        "gan_dims": gan_dims,
    }
    cfg = build_model_config(int(model_size) if model_size else None, archi, resolution, dims)
    result = model_info(cfg)
    if not as_json:
        from torchsae.train.report import model_size_note

        note = model_size_note(int(model_size) if model_size else None, cfg)
        if note:
            click.echo(note, err=True)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


@info.command("checkpoint")
@click.argument("target", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def checkpoint_cmd(target: str, as_json: bool) -> None:
    """Step, config summary, last losses and format version of a checkpoint.

    TARGET is a .pth file or a run folder (its models/last.pth); for a run folder (or a file inside
    models/) it also lists last.pth, the retained copies models/step_XXXXXXXX.pth and the snapshots
    models/snapshots/step_XXXXXXXX.pth.
    """
    from torchsae.train.runinfo import checkpoint_info, format_checkpoint_info

    result = checkpoint_info(target)
    click.echo(json.dumps(result, indent=2) if as_json else format_checkpoint_info(result))
