"""``torchsae demo``: the end-to-end demo, and ``torchsae demo make`` for the synthetic faceset alone.

Why a group that also runs without a subcommand: ``torchsae demo`` (what ``make demo`` calls) must do
the whole thing in one command, while ``torchsae demo make DIR`` lets users, tests and benchmarks get
just the faceset. Both import their heavy modules only when they run.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group("demo", invoke_without_command=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_run"),
    show_default=True,
    help="Run folder (faceset, checkpoints, previews, scores).",
)
@click.option("--count", type=click.IntRange(min=1), help="Synthetic faces per identity.")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps.")
@click.option("--seed", type=int, help="Seed of the faceset and the training run.")
@click.option("--resolution", type=click.IntRange(min=16), help="Model resolution.")
@click.pass_context
def demo_cmd(
    ctx: click.Context,
    out: Path,
    count: int | None,
    steps: int | None,
    seed: int | None,
    resolution: int | None,
) -> None:
    """Run the full demo: make a synthetic A/B faceset, train, swap and score against the truth pairs.

    A = DeepFaceLab's dst (faces to replace), B = src (the identity rendered in). Options left out
    take the demo runner's defaults.
    """
    if ctx.invoked_subcommand is not None:
        return
    from torchsae.demo.run import run_demo  # lazy: pulls in torch and the trainer

    given = {"count": count, "steps": steps, "seed": seed, "resolution": resolution}
    run_demo(out=out, **{key: value for key, value in given.items() if value is not None})


@demo_cmd.command("make")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--count", type=click.IntRange(min=1), default=512, show_default=True, help="Faces per identity."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Same seed and counts give the same bytes."
)
@click.option(
    "--truth-count",
    type=click.IntRange(min=0),
    default=None,
    help="Held-out truth pairs  [default: min(count, 32)].",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes to render with."
)
@click.option(
    "--frames",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also write full frames (OUT_DIR/frames, frames_aligned, frames_truth) for torchsae merge.",
)
@click.option(
    "--identities",
    "identities",
    type=click.IntRange(min=2),
    default=2,
    help="Identities A, B, C, ... [default: 2]; more than two also write OUT_DIR/truth_ids (every pair's truth).",
)
@click.option("--overwrite", is_flag=True, help="Replace a different demo faceset already in OUT_DIR.")
def make_cmd(
    out_dir: Path,
    count: int,
    seed: int,
    truth_count: int | None,
    workers: int,
    frames: int,
    identities: int,
    overwrite: bool,
) -> None:
    """Write a synthetic DeepFaceLab faceset: OUT_DIR/A, OUT_DIR/B (whole_face JPEGs with landmarks and
    XSeg masks) and OUT_DIR/truth (the same held-out scenes rendered as A and as B). With --identities
    N > 2 also OUT_DIR/C ... and OUT_DIR/truth_ids/<ID> (the held-out scenes as every identity)."""
    from torchsae.demo.faceset import make_demo_faceset

    result = make_demo_faceset(
        out_dir,
        count,
        seed=seed,
        identities=identities,
        truth_count=truth_count,
        workers=workers,
        overwrite=overwrite,
        frames=frames,
    )
    a_dir, b_dir = result.dirs
    if result.seconds == 0.0:
        click.echo(f"{out_dir}: already holds this demo faceset (count {count}, seed {seed}); nothing to do")
        return
    total = 2 * result.count + 2 * result.truth_count
    click.echo(
        f"wrote {result.count} faces each to {a_dir} and {b_dir}, {result.truth_count} truth pairs to "
        f"{result.truth_dir} ({total / result.seconds:.0f} faces/s)"
    )
    if len(result.identities) > 2:
        click.echo(
            f"wrote {result.count} faces each to {', '.join(result.identities[2:])} and the truth scenes as "
            f"every identity to {result.truth_ids_dir}"
        )
    if frames:
        click.echo(f"wrote {frames} frames to {result.frames_dir}, their aligned faces and truth beside it")
