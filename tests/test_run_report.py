"""What a run prints: plain log lines (headless), the start summary, the closing summary and the
"target step reached" ending, the progress modes, and the notes about presets and fresh imports."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pytest
from test_train_support import make_faceset, subprocess_env, tiny_config, train_command

from torchsae.config import ModelConfig, preset
from torchsae.train import report
from torchsae.train.checkpoint import TrainingCheckpoint
from torchsae.train.logging import TrainLogger
from torchsae.train.trainer import train

PLAIN = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]\[#(\d{6,})/(\d+)\]\[ *(\d+|-)ms\]\[ *[\d.]+ samples/s\] "
    r"loss A ([\d.]+|-) loss B ([\d.]+|-) ETA (\S+)$"
)


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_faceset(tmp_path_factory.mktemp("faces"), count=4)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_auto_is_a_bar_on_a_terminal_and_plain_lines_otherwise(monkeypatch) -> None:
    monkeypatch.delenv("TORCHSAE_NO_PROGRESS", raising=False)
    assert report.resolve_progress("auto", _Stream(tty=True)) == "bar"
    assert report.resolve_progress("auto", _Stream(tty=False)) == "plain"
    for mode in ("bar", "plain", "none"):
        assert report.resolve_progress(mode, _Stream(tty=True)) == mode
    monkeypatch.setenv("TORCHSAE_NO_PROGRESS", "1")  # the old switch: no bar, the losses still print
    assert report.resolve_progress("auto", _Stream(tty=True)) == "plain"
    assert report.resolve_progress("none", _Stream(tty=True)) == "none"


def test_plain_line_format() -> None:
    line = report.plain_line(120, 200_000, 4.0, 64.0, 0.23456, 0.5, now=0.0)
    match = PLAIN.match(line)
    assert match, line
    assert match.groups() == ("000120", "200000", "250", "0.2346", "0.5000", "13:52:50")
    assert "ETA 1d 3:46:40" in report.plain_line(0, 400_000, 4.0, 64.0, None, None, now=0.0)
    assert "loss A - loss B -" in report.plain_line(0, 10, 0.0, 0.0, None, None, now=0.0)
    assert report.format_duration(float("nan")) == "-"


def test_logger_prints_one_plain_line_per_scalars_call(tmp_path: Path, capsys) -> None:
    logger = TrainLogger(
        tmp_path / "logs", enabled=True, start_step=0, max_steps=10, samples_per_step=4, progress="plain"
    )
    logger.scalars(2, {"loss/a": 0.5, "loss/b": 0.25, "perf/steps_per_s": 2.0, "perf/samples_per_s": 8.0})
    logger.message("a message")
    logger.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "\r" not in "".join(err)
    assert PLAIN.match(err[0]).groups() == ("000002", "10", "500", "0.5000", "0.2500", "0:00:04")
    assert err[1] == "a message"
    quiet = TrainLogger(
        tmp_path / "q", enabled=True, start_step=0, max_steps=10, samples_per_step=4, progress="none"
    )
    quiet.scalars(2, {"loss/a": 0.5, "loss/b": 0.25})
    quiet.close()
    assert capsys.readouterr().err == ""


def test_model_size_note_says_what_was_built() -> None:
    assert report.model_size_note(None, ModelConfig()) is None
    assert report.model_size_note(256, preset(256)) is None
    built = ModelConfig(**{**preset(256).__dict__, "resolution": 128})
    note = report.model_size_note(256, built)
    assert "--model-size 256 with resolution 128" in note and "built liae-udt at 128 px" in note


def test_stream_restart_note_tells_a_fresh_import_from_a_world_size_change() -> None:
    imported = TrainingCheckpoint(step=7, config={}, model={}, imported_from={"folder": "/dfl/model"})
    note = report.stream_restart_note(Path("m.pth"), imported, 0)
    assert "fresh import from DeepFaceLab (/dfl/model)" in note and "world size" not in note
    two_ranks = TrainingCheckpoint(step=7, config={}, model={}, rng={0: {}, 1: {}}, data={0: {}, 1: {}})
    assert "world size changed?" in report.stream_restart_note(Path("m.pth"), two_ranks, 2)


@pytest.mark.usefixtures("one_thread")
def test_start_and_closing_summaries_and_target_reached(tmp_path: Path, faceset, capsys) -> None:
    cfg = tiny_config(tmp_path, faceset, 4, progress="plain")
    train(cfg)
    out, err = capsys.readouterr()
    start = out[out.index(f"Training SAEHD liae-ud 32 px in {tmp_path.resolve()}") :]
    for text in (
        "SAEHD liae-ud (LIAE), ",
        " parameters (",
        "32 px, face type wf",
        "optimizer    adabelief, lr 5e-05",
        "precision    amp none: off (fp32)",
        "memory       no plan",
        "ranks        cpu x1: batch 2 per rank per side, global batch 2 per side",
        f"data A (dst) {faceset[0]}: 4 usable, 0 skipped",
        f"data B (src) {faceset[1]}: 4 usable, 0 skipped",
        "steps        fresh, from step 0; target 4",
    ):
        assert text in start, text
    assert "Target step 4 reached." in out
    assert "steps        4 this session (0 -> 4)" in out
    assert f"checkpoint   {tmp_path / 'models' / 'last.pth'}" in out
    for where in ("previews", "loss.png", "tensorboard --logdir"):
        assert where in out
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert [PLAIN.match(line).group(1) for line in lines] == ["000002", "000004"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    acc.Reload()
    assert "perf/time" not in acc.Tags()["scalars"]
    elapsed = [e.value for e in acc.Scalars("perf/elapsed_s")]
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1] < 600  # seconds, not a wall clock

    # already at --max-steps: say so instead of an empty bar
    train(tiny_config(tmp_path, faceset, 4, progress="plain"), resume=tmp_path / "models" / "last.pth")
    out, err = capsys.readouterr()
    assert "Target step 4 reached: the checkpoint is already at step 4, nothing to train" in out
    assert "steps        0 this session (4 -> 4)" in out
    assert not [line for line in err.splitlines() if line.startswith("[")]


def test_headless_cli_run_prints_plain_lines_from_a_read_only_faceset(tmp_path: Path, faceset) -> None:
    """The real thing: stderr is a pipe (as under docker logs, nohup, SLURM), no --progress given, and
    the faceset cannot take an index (a file is in the way), so --index-dir holds it."""
    import shutil

    read_only = tmp_path / "ro"
    for side, folder in zip("AB", faceset, strict=True):
        shutil.copytree(folder, read_only / side, ignore=shutil.ignore_patterns(".torchsae"))
        (read_only / side / ".torchsae").write_text("in the way\n")
    sides = (read_only / "A", read_only / "B")
    before = sorted(p.name for p in read_only.rglob("*"))
    run = tmp_path / "run"
    cmd = train_command(
        sides, run, "--max-steps", "4", "--log-interval", "2", "--index-dir", str(tmp_path / "idx")
    )
    env = subprocess_env()
    env.pop("TORCHSAE_NO_PROGRESS")  # auto must find plain lines by itself: stderr is a pipe
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if PLAIN.match(line)]
    assert [PLAIN.match(line).group(1) for line in lines] == ["000002", "000004"], proc.stderr
    assert "Target step 4 reached." in proc.stdout
    assert f"index {tmp_path / 'idx'}" in proc.stdout
    assert sorted(p.name for p in read_only.rglob("*")) == before  # nothing written into the facesets
    (tmp_path / "headless_sample.txt").write_text(proc.stdout + proc.stderr)


def test_errors_name_the_flag_beside_the_config_key(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from torchsae.cli.train import name_flags, train_cmd

    result = CliRunner().invoke(train_cmd, ["--run-dir", str(tmp_path), "--batch-size", "0"])
    assert result.exit_code == 1 and "batch_size (--batch-size) must be >= 1" in result.output
    assert name_flags("data.data_dir_a is not set") == "data.data_dir_a (--data-dir-a) is not set"
    assert name_flags("train.amp bf16: no bf16 here; use --amp fp16") == (
        "train.amp bf16: no bf16 here; use --amp fp16"  # the flag is named already
    )
    assert name_flags("run.yaml: lr must be positive") == "run.yaml: lr (--lr) must be positive"


@pytest.mark.usefixtures("one_thread")
def test_model_size_with_another_resolution_says_what_is_built(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from torchsae.cli.train import train_cmd

    args = ["--run-dir", str(tmp_path), "--device", "cpu", "--model-size", "256", "--resolution", "128"]
    args += ["--ae-dims", "16", "--e-dims", "8", "--d-dims", "8", "--d-mask-dims", "4"]
    result = CliRunner().invoke(train_cmd, args)  # no faceset: stops at the data, after the note
    assert result.exit_code == 1
    assert "--model-size 256 with resolution 128" in result.output
    assert "built liae-udt at 128 px" in result.output
    assert "data.data_dir_a (--data-dir-a) is not set" in result.output


def test_info_model_says_what_model_size_with_resolution_builds() -> None:
    from click.testing import CliRunner

    from torchsae.cli import main

    result = CliRunner().invoke(main, ["info", "model", "--model-size", "256", "--resolution", "128"])
    assert result.exit_code == 0, result.output
    assert "built liae-udt at 128 px" in result.stderr
    assert result.stdout.startswith("SAEHD liae-udt @ 128 px")


def test_summary_names_skipped_files_and_the_memory_plan(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import torch

    from torchsae.config import Config

    class _Index:  # what the summary reads of a FacesetIndex
        root = Path("/faces/A")
        skipped = [{"name": "bad.jpg"}, {"name": "gray.jpg"}]
        directory = Path("/idx/A-0123/index_r128_xseg_wf/v000001")

        def __len__(self) -> int:
            return 98

    index = _Index()
    data = SimpleNamespace(indexes={"a": index})
    plan = SimpleNamespace(
        batch_size=16, micro_batch=4, grad_accum=4, describe=lambda: "Memory plan: batch 16 per side in 4"
    )
    cfg = Config()
    cfg.train.batch_size, cfg.train.run_dir = 16, str(tmp_path)
    text = report.RunReport(cfg, enabled=True).start_summary(
        model=torch.nn.Linear(2, 3),
        discriminators={"gan": torch.nn.Linear(1, 1)},
        world_size=4,
        device="cuda:0",
        plan=plan,
        amp_dtype=torch.bfloat16,
        data=data,
        step=0,
        resume=None,
    )
    assert (
        "data A (dst) /faces/A: 98 usable, 2 skipped (list: /idx/A-0123/index_r128_xseg_wf/v000001/skipped.json)"
        in text
    )
    assert "data B (src) synthetic batches" in text
    assert "memory       batch 16 per side in 4" in text
    assert "cuda:0 x4: batch 16 per rank per side (4 micro-batches of 4), global batch 64 per side" in text
    assert "precision    amp none: bfloat16" in text and "gan D        2 parameters" in text
