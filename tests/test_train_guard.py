"""Issue 14: divergence never costs a good checkpoint; a failure saves first; one run per folder;
resuming an older copy never deletes it; snapshots are kept forever."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_train_support import make_faceset, scale_loss_at, subprocess_env, tiny_config, train_command

from torchsae.errors import TorchSAEError
from torchsae.losses import SAEHDLoss
from torchsae.train import checkpoint as ck
from torchsae.train.hooks import TrainHooks
from torchsae.train.runconfig import resolve_run_config
from torchsae.train.trainer import DivergedError, TrainingFailed, state_digest, train


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_faceset(tmp_path_factory.mktemp("faces"))


def _digests(models: Path) -> dict[str, str]:
    files = [models / "last.pth", *(p for _, p in ck.retained_checkpoints(models))]
    return {p.name: state_digest(ck.load_checkpoint(p)["model"]) for p in files if p.exists()}


@pytest.mark.usefixtures("one_thread")
def test_a_huge_lr_never_overwrites_the_good_checkpoints(tmp_path: Path, faceset) -> None:
    """--lr 1e6 on a trained run: the first update is finite and used to be saved, then pruned the
    good copies; now nothing diverged is written, restores use pre-streak files and the run fails."""
    cfg = tiny_config(tmp_path, faceset, 20, save_interval=2, keep=3)
    train(cfg)
    models = tmp_path / "models"
    before = _digests(models)
    assert sorted(before) == ["last.pth", "step_00000016.pth", "step_00000018.pth", "step_00000020.pth"]
    exploding = tiny_config(tmp_path, faceset, 60, save_interval=2, keep=3)
    exploding.optim.lr = 1e6
    with pytest.raises(DivergedError) as caught:
        train(exploding, resume=models / "last.pth")
    assert "\n" not in str(caught.value)
    assert _digests(models) == before  # every good file is still there, byte for byte the same weights


def test_a_finite_loss_spike_is_a_bad_streak_and_restores(
    tmp_path: Path, faceset, monkeypatch, capsys
) -> None:
    scale_loss_at(monkeypatch, set(range(15, 20)), 1e4)  # finite, far above the running level
    cfg = tiny_config(tmp_path, faceset, 24, save_interval=1, keep=100)
    result = train(cfg)
    assert result.skipped_steps == 5
    err = capsys.readouterr().err
    assert "restored the weights and optimiser state of" in err and "(step 14," in err
    steps = [s for s, _ in ck.retained_checkpoints(tmp_path / "models")]
    assert not set(range(15, 21)) & set(steps)  # nothing saved during the streak (nor the restored state)
    assert {14, 21, 24} <= set(steps)


def test_the_spike_guard_can_be_switched_off(tmp_path: Path, faceset, monkeypatch) -> None:
    scale_loss_at(monkeypatch, set(range(15, 20)), 1e4)
    cfg = tiny_config(tmp_path, faceset, 22, spike_factor=0.0)
    assert train(cfg).skipped_steps == 0


def test_a_run_that_skipped_most_steps_fails(tmp_path: Path, faceset, monkeypatch) -> None:
    original = SAEHDLoss.forward
    calls = [0]

    def forward(self, out, batch, *args, **kwargs):  # two bad steps in three: never a full streak
        loss, terms = original(self, out, batch, *args, **kwargs)
        calls[0] += 1
        return (loss * float("nan") if calls[0] % 3 else loss), terms

    monkeypatch.setattr(SAEHDLoss, "forward", forward)
    with pytest.raises(DivergedError, match="of this run's 12 steps were skipped"):
        train(tiny_config(tmp_path, faceset, 12))


@pytest.mark.usefixtures("one_thread")
def test_an_exception_in_the_loop_saves_the_last_whole_step_first(tmp_path: Path, faceset) -> None:
    def fail_at_7(step: int, rank: int) -> None:
        if step == 7:
            raise OSError(errno.EIO, "Input/output error", "/media/usb/faces/00042.jpg")

    run = tmp_path / "run"
    with pytest.raises(TrainingFailed) as caught:
        train(tiny_config(run, faceset, 10), hooks=TrainHooks(on_step=fail_at_7))
    message = str(caught.value)
    assert "\n" not in message and "OSError" in message and "saved" in message and "(step 7)" in message
    assert ck.load_checkpoint(run / "models" / "last.pth")["step"] == 7
    # the save holds RNG and data positions: resuming it equals an uninterrupted run bit for bit
    train(tiny_config(run, faceset, 10), resume=run / "models" / "last.pth")
    train(tiny_config(tmp_path / "straight", faceset, 10))
    assert _digests(run / "models")["last.pth"] == _digests(tmp_path / "straight" / "models")["last.pth"]


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path, faceset, monkeypatch, capsys
) -> None:
    train(tiny_config(tmp_path, faceset, 2))
    before = _digests(tmp_path / "models")["last.pth"]
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ck.CheckpointError, match="no checkpoint could be written"):
        train(tiny_config(tmp_path, faceset, 6, save_interval=2), resume=tmp_path / "models" / "last.pth")
    err = capsys.readouterr().err
    assert "Checkpoint not written: " in err
    assert "last.pth: No space left on device; the previous checkpoint is kept" in err
    monkeypatch.undo()
    assert _digests(tmp_path / "models")["last.pth"] == before
    assert not list((tmp_path / "models").glob(".*.tmp"))


def _start(faceset, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(faceset, run, *extra),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path, faceset) -> None:
    first = _start(faceset, tmp_path, "--max-steps", "100000", "--save-interval", "100000")
    try:
        for line in first.stdout:
            if line.startswith("Training "):
                break
        stray = tmp_path / "models" / ".last.pth.abc123.tmp"  # what a live save looks like
        stray.write_bytes(b"in flight")
        second = subprocess.run(
            train_command(faceset, tmp_path, "--max-steps", "3"),
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert "Traceback" not in second.stderr
        assert f"another training is using this run folder (PID {first.pid}" in lines[-1]
        assert stray.exists()  # the refused start cleaned up nothing of the live run
    finally:
        first.kill()
        first.communicate()
    # the kernel released the dead holder's lock: the folder is usable again at once
    again = subprocess.run(
        train_command(faceset, tmp_path, "--max-steps", "2"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-2000:]


def test_resuming_an_older_copy_never_deletes_it(tmp_path: Path, faceset, capsys) -> None:
    models = tmp_path / "models"
    train(tiny_config(tmp_path, faceset, 10, save_interval=2, keep=3))
    assert [s for s, _ in ck.retained_checkpoints(models)] == [6, 8, 10]
    older = models / "step_00000006.pth"
    capsys.readouterr()
    train(tiny_config(tmp_path, faceset, 9, save_interval=1, keep=3), resume=older)
    out = capsys.readouterr().out
    assert "is older than" in out and "(step 10)" in out
    assert older.exists()
    assert [s for s, _ in ck.retained_checkpoints(models)] == [6, 7, 8, 9]  # 6 kept, newest 3 written
    assert ck.load_checkpoint(models / "last.pth")["step"] == 9


def test_snapshots_are_kept_listed_and_resumable(tmp_path: Path, faceset) -> None:
    models = tmp_path / "models"
    train(tiny_config(tmp_path, faceset, 12, save_interval=2, keep=1, snapshot_every=4))
    kinds = [(kind, step) for kind, step, _ in ck.list_checkpoints(models)]
    assert kinds == [("snapshot", 4), ("snapshot", 8), ("snapshot", 12), ("copy", 12), ("last", 12)]
    snapshot = models / "snapshots" / "step_00000004.pth"
    config, resume = resolve_run_config({}, resume=snapshot)
    assert resume == snapshot and Path(config.train.run_dir) == tmp_path
    assert train(config, resume=resume).step == 12
    assert ck.load_checkpoint(snapshot)["step"] == 4


def test_autobackup_hours_takes_snapshots(tmp_path: Path, faceset) -> None:
    train(tiny_config(tmp_path, faceset, 3, autobackup_hours=1e-9, save_interval=100))
    assert [s for s, _ in ck.snapshots(tmp_path / "models")] == [1, 2, 3]


def test_a_corrupt_last_checkpoint_names_the_intact_copies(tmp_path: Path, faceset) -> None:
    train(tiny_config(tmp_path, faceset, 4, save_interval=2, keep=2))
    last = tmp_path / "models" / "last.pth"
    last.unlink()  # (writing in place would also change step_00000004.pth, a hard link of it)
    last.write_bytes(b"\0" * 100)
    with pytest.raises(TorchSAEError) as caught:
        resolve_run_config({"train": {"run_dir": str(tmp_path)}})
    message = str(caught.value)
    assert (
        "not a zip archive" in message and "step_00000004.pth" in message and "step_00000002.pth" in message
    )
    assert "mmap" not in message


def test_run_dir_and_last_pth_of_the_wrong_kind_are_one_line(tmp_path: Path, faceset) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(TorchSAEError, match="--run-dir is a file"):
        resolve_run_config({"train": {"run_dir": str(a_file)}})
    (tmp_path / "run" / "models" / "last.pth").mkdir(parents=True)
    with pytest.raises(TorchSAEError, match="last.pth: is a folder"):
        resolve_run_config({"train": {"run_dir": str(tmp_path / "run")}})


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_the_trainer_takes_its_data_workers_along(tmp_path: Path, faceset) -> None:
    proc = _start(faceset, tmp_path, "--max-steps", "100000", "--save-interval", "100000", "--workers", "2")
    for line in proc.stdout:
        if line.startswith("Training "):
            break
    deadline = time.monotonic() + 30
    while len(_descendants(proc.pid)) < 3 and time.monotonic() < deadline:  # fork server + workers
        time.sleep(0.2)
    helpers = _descendants(proc.pid)
    assert len(helpers) >= 3, helpers
    os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: a zombie trainer must count as dead
    deadline = time.monotonic() + 15
    while any(_running(p) for p in helpers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in helpers if _running(p)]
    for pid in left:  # do not leak them from the test either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()  # (a survivor holding the pipes would block this forever)
    assert not left, "orphaned data-loading processes survived the trainer"


@pytest.mark.parametrize(
    ("extra", "config_text", "expected"),
    [
        (["--lr", "inf"], None, "optim.lr (--lr): must be a finite number, got inf"),
        (["--spike-factor", "nan"], None, "train.spike_factor (--spike-factor): must be a finite number"),
        (
            [],
            "train:\n  batch_size: eight\n",
            "train.batch_size (--batch-size): must be an integer, got 'eight'",
        ),
    ],
)
def test_bad_option_values_are_one_line_before_training(
    tmp_path: Path, faceset, extra: list[str], config_text: str | None, expected: str
) -> None:
    from click.testing import CliRunner

    from torchsae.cli import main

    args = train_command(faceset, tmp_path / "run", "--max-steps", "2", *extra)[2:]
    if config_text is not None:
        (tmp_path / "cfg.yaml").write_text(config_text)
        args += ["--config", str(tmp_path / "cfg.yaml")]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code != 0
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "models" / "last.pth").exists()


def test_skipped_files_and_decode_failures_are_reported(tmp_path: Path, capsys) -> None:
    faces = make_faceset(tmp_path / "faces")
    (faces[0] / "notes.jpg").write_bytes(b"not a jpeg")  # the index skips it
    train(tiny_config(tmp_path / "run", faces, 1))
    out = capsys.readouterr().out
    assert "Side A: 8 faces used, 1 files skipped by the index" in out
    for path in sorted(faces[0].glob("*.jpg"))[:4]:  # go bad after indexing, size and mtime unchanged
        info = path.stat()
        path.write_bytes(b"\0" * info.st_size)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    train(
        tiny_config(tmp_path / "run", faces, 21, log_interval=5),
        resume=tmp_path / "run" / "models" / "last.pth",
    )
    err = capsys.readouterr().err
    assert "samples failed to decode in this run and were replaced" in err
    assert "files failed to decode in this run and were replaced by other faces" in err
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events and any(b"data/decode_failures" in e.read_bytes() for e in events)


def test_a_streak_right_after_resuming_restores_an_earlier_copy(
    tmp_path: Path, faceset, monkeypatch, capsys
) -> None:
    train(tiny_config(tmp_path, faceset, 10, save_interval=2, keep=3))
    scale_loss_at(monkeypatch, set(range(5)), float("nan"))  # the resumed weights are bad at once
    result = train(
        tiny_config(tmp_path, faceset, 24, save_interval=2, keep=3), resume=tmp_path / "models" / "last.pth"
    )
    assert result.step == 24 and result.skipped_steps == 5
    assert "step_00000008.pth (step 8, saved before the streak began)" in capsys.readouterr().err


def test_a_faceset_unplugged_mid_run_saves_and_ends_with_one_line(tmp_path: Path, faceset) -> None:
    import shutil

    faces_a = tmp_path / "A"
    shutil.copytree(faceset[0], faces_a)
    run = tmp_path / "run"
    cmd = train_command((faces_a, faceset[1]), run, "--max-steps", "100000", "--save-interval", "100000")
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("Training "):
            break
    time.sleep(2.0)
    shutil.rmtree(faces_a)  # the drive goes away
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("Error: ") and "failed to decode" in last_line and "saved" in last_line
    assert "Traceback" not in err
    step = ck.load_checkpoint(run / "models" / "last.pth")["step"]
    assert f"(step {step})" in last_line
