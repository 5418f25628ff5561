"""TorchSAE imports and works where POSIX-only modules do not exist (Windows).

CI runs on Linux, so Windows itself is not tested; this test simulates its standard library: in a
fresh interpreter an ``__import__`` hook makes ``fcntl``, ``resource`` and ``termios`` (POSIX-only
modules that Windows lacks) unimportable *from TorchSAE's own modules*, then every module of
``torchsae`` and ``pipelines`` is imported, a side index is built and the trainer runs one step on a
real (tiny) faceset through the DataLoader backend. A module of ours that imports one of them without
a fallback fails here as it would on Windows. Third-party packages keep them: their Linux backends
(psutil's, filelock's) are not the code that runs on Windows, and they ship Windows backends.
``importlib.import_module`` is not intercepted; TorchSAE uses it only for its own modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCKED = ("fcntl", "resource", "termios")

SCRIPT = r"""
import sys

BLOCKED = set(sys.argv[2].split(","))


import builtins

OURS = ("torchsae", "pipelines")
refused = []
real_import = builtins.__import__


def blocking_import(name, globals=None, locals=None, fromlist=(), level=0):
    '''``import`` as Windows' standard library would answer TorchSAE's modules: no POSIX-only ones.

    Placed on ``__import__`` rather than on the meta path so that a module that a third-party
    package has already loaded (psutil's Linux backend loads ``resource``) is refused as well.
    '''
    importer = (globals or {}).get("__name__", "")
    if level == 0 and name.partition(".")[0] in BLOCKED and importer.partition(".")[0] in OURS:
        refused.append(f"{importer} -> {name}")
        raise ModuleNotFoundError(f"No module named {name!r} (simulating Windows)", name=name)
    return real_import(name, globals, locals, fromlist, level)


builtins.__import__ = blocking_import

import importlib
import json
import pkgutil
from pathlib import Path

import torch

torch.set_num_threads(1)
import pipelines
import torchsae

imported = []
for package in (torchsae, pipelines):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name.rpartition(".")[2] == "__main__":
            continue  # importing it would run the command line
        importlib.import_module(module.name)
        imported.append(module.name)

from pipelines.index import build_index
from torchsae.config import Config, ModelConfig
from torchsae.demo import make_demo_faceset
from torchsae.train.trainer import train

work = Path(sys.argv[1])
faces = make_demo_faceset(work / "faces", 8, seed=0, truth_count=0).dirs
report = build_index(faces[0], 32, workers=1, progress=False)
cfg = Config()
cfg.model = ModelConfig(archi="df-ud", resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4)
cfg.data.data_dir_a, cfg.data.data_dir_b = str(faces[0]), str(faces[1])
cfg.data.workers, cfg.data.backend = 0, "torch"
t = cfg.train
t.batch_size, t.max_steps, t.run_dir, t.device = 2, 1, str(work / "run"), "cpu"
t.log_interval, t.preview_interval, t.save_interval = 1, 1000, 1000
result = train(cfg.validate())
print(json.dumps({"imported": imported, "indexed": len(report.index), "step": result.step, "refused": refused}))
"""


def test_everything_imports_and_runs_without_posix_only_modules(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TORCHSAE_NO_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), ",".join(BLOCKED)],
        capture_output=True,
        text=True,
        env={**_base_env(), **env},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["refused"] == ["torchsae.train.logging -> resource"]  # its fallback, psutil, ran
    assert {
        "pipelines.index",
        "torchsae.train.logging",
        "torchsae.train.trainer",
        "torchsae.cli.train",
    } <= set(result["imported"])
    assert len(result["imported"]) > 60  # every module, not a few
    assert result["indexed"] == 8 and result["step"] == 1
    assert (tmp_path / "run" / "models" / "last.pth").is_file()


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_loader_workers_are_spawned_where_there_is_no_fork_server(monkeypatch) -> None:
    """Windows has only "spawn"; Linux keeps the fork server (why: torch_loader._worker_context)."""
    import multiprocessing

    from pipelines import torch_loader

    assert torch_loader._worker_context().get_start_method() == (
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert torch_loader._worker_context().get_start_method() == "spawn"


def test_peak_memory_without_resource_falls_back_to_psutil(monkeypatch) -> None:
    """Without ``resource`` (Windows) the peak comes from psutil: a positive size in bytes."""
    import builtins

    from torchsae.train import logging as train_logging

    real_import = builtins.__import__

    def no_resource(name, *args, **kwargs):
        if name == "resource":
            raise ModuleNotFoundError("No module named 'resource'", name=name)
        return real_import(name, *args, **kwargs)

    with_resource = train_logging.peak_rss_bytes()
    monkeypatch.setattr(builtins, "__import__", no_resource)
    without = train_logging.peak_rss_bytes()
    assert 10 * 2**20 < without <= with_resource * 1.5  # the current RSS (≤ the peak) of a torch process
