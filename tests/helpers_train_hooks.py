"""Test-only torchrun entry point: ``launch/train.py`` with training hooks installed by parameter.

``python -m torch.distributed.run ... tests/helpers_train_hooks.py [--probe-dir DIR] [--fail-at-step N
--fail-rank R --fail-marker FILE] -- <torchsae train options>``

* ``--probe-dir``: each rank writes ``DIR/rank<r>.json`` with its final weight digest and the A sample
  indices it drew, step by step (how the DDP tests see inside every rank).
* ``--fail-at-step``: the given rank (every rank without ``--fail-rank``) raises once at that step;
  the marker file records that it did, so the restarted worker trains on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the source checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torchsae.cli.train import main_entry  # noqa: E402
from torchsae.train.hooks import TrainHooks  # noqa: E402
from torchsae.train.trainer import state_digest  # noqa: E402


def probe_hooks(
    folder: Path | None, fail_at: int | None, fail_rank: int | None, marker: Path | None
) -> TrainHooks:
    drawn: list[list[int]] = []

    def on_batch(batch, rank: int) -> None:
        drawn.append(batch["index_a"].tolist())

    def on_finish(model, rank: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        probe = {"digest": state_digest(model.state_dict()), "index_a": drawn}
        (folder / f"rank{rank}.json").write_text(json.dumps(probe), encoding="utf-8")

    def on_step(step: int, rank: int) -> None:
        if fail_at is None or marker is None or step != fail_at or marker.exists():
            return
        if fail_rank is None or rank == fail_rank:
            marker.write_text(f"failed once at step {step} on rank {rank}\n", encoding="utf-8")
            raise RuntimeError(f"test hook: simulated failure at step {step} on rank {rank}")

    return TrainHooks(
        on_step=on_step if fail_at is not None else None,
        on_batch=on_batch if folder else None,
        on_finish=on_finish if folder else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="helpers_train_hooks.py")
    parser.add_argument("--probe-dir", type=Path)
    parser.add_argument("--fail-at-step", type=int)
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--fail-marker", type=Path)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    own, rest = parser.parse_args(argv[:split]), argv[split + 1 :]
    hooks = probe_hooks(own.probe_dir, own.fail_at_step, own.fail_rank, own.fail_marker)
    main_entry(rest, prog_name="helpers_train_hooks.py", hooks=hooks)


if __name__ == "__main__":
    main()
