"""torchrun entry point: ``torchrun --nproc_per_node=N launch/train.py <torchsae train options>``.

A thin wrapper so the options stay defined once (``torchsae.cli.train``). torchrun sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; the trainer joins the process group from them (NCCL on GPUs, gloo
on the CPU). Multi-node: the same command on every node with torchrun's rendezvous flags, e.g.
``torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500
--rdzv-id=job1 launch/train.py --data-dir-a ... --run-dir /shared/run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torchsae.cli.train import main_entry  # noqa: E402

if __name__ == "__main__":
    main_entry(prog_name="launch/train.py")
