"""``torchsae swap`` (aligned faces -> swapped faces and masks) and ``torchsae merge`` (frames -> merged
frames, optionally a video): DeepFaceLab's merger (step 7) and video assembly (step 8).

Option names follow DeepFaceLab's merger settings (``--mask-mode``, ``--erode-mask-modifier``,
``--blur-mask-modifier``, ``--output-face-scale``, ``--color-transfer-mode``, ``--mode``) with its
defaults. Heavy imports happen only when a command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from torchsae.merge.blend import COLOR_TRANSFER_MODES, MASK_MODES, MODES, MergeOptions

_model_options = [
    click.option(
        "--model",
        "model",
        required=True,
        type=click.Path(exists=True, path_type=Path),
        help="A TorchSAE checkpoint (or run folder), an exported .onnx, or a DeepFaceLive .dfm.",
    ),
    click.option(
        "--faces",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Aligned faces (DeepFaceLab JPEGs, e.g. data_dst/aligned).",
    ),
    click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True),
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads  [default: cores, at most 8].",
    ),
    click.option(
        "--device", type=click.Choice(["cpu", "cuda"]), default=None, help="[default: cuda when available]"
    ),
    click.option(
        "--face-type",
        type=click.Choice(["h", "mf", "f", "wf", "head"]),
        default=None,
        help="The model's face type, for a .dfm (which does not record it)  [default: the model's, else wf].",
    ),
    click.option(
        "--model-size", type=click.IntRange(min=16), default=None, help="Expected model resolution (checked)."
    ),
    click.option(
        "--overwrite", is_flag=True, help="Redo outputs that already exist (default: skip them, i.e. resume)."
    ),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
]


def model_options(func):
    for option in reversed(_model_options):
        func = option(func)
    return func


def _swapper(model: Path, device, face_type, model_size):
    from torchsae.merge.model import load_swapper

    swapper = load_swapper(model, device=device, face_type=face_type, model_size=model_size)
    click.echo(f"model: {swapper.description}", err=True)
    return swapper


@click.command("swap")
@model_options
@click.option(
    "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "jpg", "dfl"]),
    default="png",
    show_default=True,
    help="png/jpg: the swap at the model's resolution; dfl: a DeepFaceLab JPEG at the file's size that "
    "keeps the face's metadata.",
)
def swap_cmd(
    model, faces, batch_size, workers, device, face_type, model_size, overwrite, no_progress, output, fmt
):
    """Run the A->B swap on every aligned face: OUTPUT/NAME.png (or .jpg), OUTPUT/swap_mask/NAME.png
    (the learned swap mask) and OUTPUT/face_mask/NAME.png (the learned A mask)."""
    from torchsae.merge.run import swap_faces

    swapper = _swapper(model, device, face_type, model_size)
    report = swap_faces(
        swapper,
        faces,
        output,
        fmt=fmt,
        batch_size=batch_size,
        workers=workers,
        overwrite=overwrite,
        progress=not no_progress,
    )
    click.echo(report.summary())


@click.command("merge")
@model_options
@click.option(
    "--frames",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The source frames: a folder (e.g. data_dst) or a video file.",
)
@click.option(
    "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Merged frames folder."
)
@click.option(
    "--mode", type=click.Choice(MODES), default=MergeOptions.mode, show_default=True, help="Blend mode."
)
@click.option(
    "--mask-mode",
    type=click.Choice(MASK_MODES),
    default=MergeOptions.mask_mode,
    show_default=True,
    help="learned-prd: the swap's learned mask; learned-dst: the learned A mask; dst: the landmark hull; "
    "xseg-dst: the aligned face's XSeg mask (hull when it has none); '*' multiplies, '+' adds.",
)
@click.option(
    "--erode-mask-modifier",
    type=click.IntRange(-400, 400),
    default=MergeOptions.erode_mask_modifier,
    show_default=True,
    help="Erode (>0) or dilate (<0) the mask, in pixels of the model's face crop.",
)
@click.option(
    "--blur-mask-modifier",
    type=click.IntRange(0, 400),
    default=MergeOptions.blur_mask_modifier,
    show_default=True,
    help="Blur the mask's edge, in pixels of the model's face crop.",
)
@click.option(
    "--output-face-scale",
    type=click.IntRange(-50, 50),
    default=MergeOptions.output_face_scale,
    show_default=True,
    help="Scale the paste by 1 + value/100 (positive: smaller face), as DeepFaceLab.",
)
@click.option(
    "--color-transfer-mode",
    type=click.Choice(COLOR_TRANSFER_MODES),
    default=MergeOptions.color_transfer_mode,
    show_default=True,
    help="Re-colour the swap toward the frame's face (overlay mode; seamless matches colour itself).",
)
@click.option(
    "--masks",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write each frame's paste mask here.",
)
@click.option(
    "--to-video",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Then encode the merged frames to this video.",
)
@click.option(
    "--fps",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Video frame rate  [default: the source video's, else 25].",
)
@click.option(
    "--audio-from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Copy the audio of this video  [default: the source video's, when --frames is a video].",
)
def merge_cmd(
    model,
    faces,
    batch_size,
    workers,
    device,
    face_type,
    model_size,
    overwrite,
    no_progress,
    frames,
    output,
    mode,
    mask_mode,
    erode_mask_modifier,
    blur_mask_modifier,
    output_face_scale,
    color_transfer_mode,
    masks,
    to_video,
    fps,
    audio_from,
):
    """Paste each swapped face back into its frame (DeepFaceLab's merger): OUTPUT keeps every frame's
    name, size and format; frames without an aligned face are copied unchanged; existing outputs are
    skipped unless --overwrite."""
    from torchsae.merge.run import merge_frames

    options = MergeOptions(
        mode=mode,
        mask_mode=mask_mode,
        erode_mask_modifier=erode_mask_modifier,
        blur_mask_modifier=blur_mask_modifier,
        output_face_scale=output_face_scale,
        color_transfer_mode=color_transfer_mode,
    )
    swapper = _swapper(model, device, face_type, model_size)
    report = merge_frames(
        swapper,
        frames,
        faces,
        output,
        options,
        batch_size=batch_size,
        workers=workers,
        overwrite=overwrite,
        to_video=to_video,
        fps=fps,
        audio_from=audio_from,
        progress=not no_progress,
        masks_dir=masks,
    )
    click.echo(report.summary())
