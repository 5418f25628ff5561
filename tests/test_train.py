"""The training loop in one process: exact resume, run-folder outputs, the NaN guard, AMP, the CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch
import yaml
from click.testing import CliRunner
from test_train_support import REPO, TINY_FLAGS, make_faceset, scale_loss_at, tiny_config

from torchsae.cli.train import train_cmd
from torchsae.train import checkpoint as ck
from torchsae.train.trainer import DivergedError, state_digest, train

pytestmark = pytest.mark.usefixtures("one_thread")  # every test here trains in-process


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_faceset(tmp_path_factory.mktemp("faces"))


def _assert_same_state(a: dict, b: dict) -> None:
    assert state_digest(a["model"]) == state_digest(b["model"])
    opt_a, opt_b = a["optimizers"]["model"], b["optimizers"]["model"]
    for key, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][key][name]), (key, name)
    assert opt_a["lr_dropout_rng"].keys() == opt_b["lr_dropout_rng"].keys()
    for device, rng in opt_a["lr_dropout_rng"].items():
        assert torch.equal(rng, opt_b["lr_dropout_rng"][device])


@pytest.mark.parametrize("lr_dropout", [False, True])
def test_half_resume_half_is_bitwise_identical(tmp_path: Path, faceset, lr_dropout: bool) -> None:
    steps = 6
    straight = tiny_config(tmp_path / "straight", faceset, steps, save_interval=2)
    straight.optim.lr_dropout = lr_dropout
    result = train(straight)
    assert result.step == steps and result.skipped_steps == 0

    first = tiny_config(tmp_path / "split", faceset, steps // 2)
    first.optim.lr_dropout = lr_dropout
    train(first)
    second = tiny_config(tmp_path / "split", faceset, steps)
    second.optim.lr_dropout = lr_dropout
    resumed = train(second, resume=tmp_path / "split" / "models" / "last.pth")
    assert resumed.step == steps

    a = ck.load_checkpoint(tmp_path / "straight" / "models" / "last.pth")
    b = ck.load_checkpoint(tmp_path / "split" / "models" / "last.pth")
    _assert_same_state(a, b)
    assert a["data"][0] == b["data"][0]
    assert bool(a["optimizers"]["model"]["lr_dropout_rng"]) == lr_dropout
    # and training really moved the weights (a resume that loads nothing would also be "identical")
    fresh = tiny_config(tmp_path / "fresh", faceset, 1)
    from torchsae.models import SAEHD

    torch.manual_seed(fresh.train.seed)
    assert state_digest(SAEHD(fresh.model).state_dict()) != state_digest(a["model"])


def test_run_folder_outputs(tmp_path: Path, faceset) -> None:
    cfg = tiny_config(tmp_path, faceset, 6, preview_interval=3, save_interval=2, keep=2)
    train(cfg)
    models, logs = tmp_path / "models", tmp_path / "logs"
    assert sorted(p.name for p in models.glob("*.pth")) == [
        "last.pth",
        "step_00000004.pth",
        "step_00000006.pth",
    ]
    saved = yaml.safe_load((models / "config.yaml").read_text())
    assert saved == cfg.to_dict()
    state = ck.load_checkpoint(models / "last.pth")
    assert state["step"] == 6 and state["config"] == cfg.to_dict()
    assert set(state["rng"]) == {0} and set(state["data"]) == {0}
    previews = sorted(p.name for p in (logs / "previews").iterdir())
    assert previews == ["step_00000003.png", "step_00000006.png"]
    image = cv2.imread(str(logs / "previews" / "step_00000006.png"))
    assert image.shape[1] == 9 * 128 and image.shape[0] > 4 * 128  # 9 columns, 4 rows, header
    assert cv2.imread(str(logs / "loss.png")) is not None
    history = state["metrics"]["history"]
    assert [s for s, _ in history["loss_a"]] == [2, 4, 6] and all(v > 0 for _, v in history["loss_b"])
    events = list((logs / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logs / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/a", "loss/b", "loss/a_dssim", "loss/b_mask", "train/lr", "train/grad_norm"} <= tags
    assert {"perf/samples_per_s", "perf/memory_mb"} <= tags
    assert [e.step for e in acc.Scalars("loss/a")] == [2, 4, 6]
    assert acc.Tags()["images"] == ["preview"]


def test_restarting_a_finished_run_trains_nothing(tmp_path: Path, faceset) -> None:
    cfg = tiny_config(tmp_path, faceset, 2)
    train(cfg)
    before = ck.load_checkpoint(tmp_path / "models" / "last.pth")
    result = train(cfg, resume=tmp_path / "models" / "last.pth")
    assert result.step == 2
    after = ck.load_checkpoint(tmp_path / "models" / "last.pth")
    assert after["step"] == 2 and state_digest(after["model"]) == state_digest(before["model"])


def test_non_finite_steps_are_skipped_and_counted(tmp_path: Path, faceset, monkeypatch) -> None:
    scale_loss_at(monkeypatch, {2, 3}, float("nan"))
    cfg = tiny_config(tmp_path, faceset, 6, save_interval=1, keep=10)
    result = train(cfg)
    assert result.skipped_steps == 2
    state = ck.load_checkpoint(tmp_path / "models" / "last.pth")
    assert state["metrics"]["skipped_steps"] == 2
    assert not ck.non_finite_tensors(state["model"])
    # the weights of step 2 produced the first NaN (the step at 2), so neither they nor anything
    # during the streak (3, 4) is saved: a save is written only after the next loss confirms it
    assert [s for s, _ in ck.retained_checkpoints(tmp_path / "models")] == [1, 5, 6]


def test_repeated_non_finite_steps_restore_the_last_checkpoint(
    tmp_path: Path, faceset, monkeypatch, capsys
) -> None:
    from torchsae.train import trainer

    scale_loss_at(monkeypatch, set(range(3, 3 + trainer.NONFINITE_LIMIT)), float("nan"))
    restored = []
    original_load = trainer._load_weights

    def spy(state, *args):
        restored.append(int(state.step))
        return original_load(state, *args)

    monkeypatch.setattr(trainer, "_load_weights", spy)
    cfg = tiny_config(tmp_path, faceset, 3 + trainer.NONFINITE_LIMIT + 2, save_interval=2)
    result = train(cfg)
    # steps 3..7 are non-finite: the streak began at step 3, so nothing is saved from then on and the
    # checkpoint restored after the fifth bad step is the newest one saved before it, step 2
    assert restored == [2]
    assert result.skipped_steps == trainer.NONFINITE_LIMIT
    assert "restored the weights and optimiser state of" in capsys.readouterr().err


def test_divergence_without_a_checkpoint_is_a_clear_error(tmp_path: Path, faceset, monkeypatch) -> None:
    from torchsae.train import trainer

    scale_loss_at(monkeypatch, set(range(100)), float("nan"))
    cfg = tiny_config(tmp_path, faceset, 20)
    with pytest.raises(DivergedError, match="non-finite steps in a row"):
        train(cfg)
    assert not (tmp_path / "models" / "last.pth").exists()
    assert trainer.NONFINITE_LIMIT <= 20


@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_amp_trains_with_finite_weights(tmp_path: Path, faceset, amp: str) -> None:
    cfg = tiny_config(tmp_path, faceset, 2, amp=amp)
    train(cfg)
    state = ck.load_checkpoint(tmp_path / "models" / "last.pth")
    assert not ck.non_finite_tensors(state["model"])
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0  # the GradScaler's state travels with the checkpoint
    else:
        assert state["scaler"] == {}


def test_cli_trains_and_writes_the_resolved_config(tmp_path: Path, faceset) -> None:
    args = ["--data-dir-a", str(faceset[0]), "--data-dir-b", str(faceset[1]), "--run-dir", str(tmp_path)]
    args += TINY_FLAGS + ["--max-steps", "2", "--no-random-warp", "--lr", "1e-4", "--optimizer", "rmsprop"]
    result = CliRunner().invoke(train_cmd, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "models" / "config.yaml").read_text())
    assert saved["data"]["random_warp"] is False and saved["optim"]["lr"] == 1e-4
    assert saved["optim"]["optimizer"] == "rmsprop" and saved["model"]["ae_dims"] == 16
    state = ck.load_checkpoint(tmp_path / "models" / "last.pth")
    assert "square_avg" in next(iter(state["optimizers"]["model"]["state"].values()))
    # LIAE without random warp trains no inter_ab weight: it has no optimiser state
    names = list(state["model"])
    inter_ab = {
        i for i, n in enumerate(n for n in names if not n.endswith("_buffer")) if n.startswith("inter_ab.")
    }
    assert inter_ab and inter_ab.isdisjoint(state["optimizers"]["model"]["state"])
    # the same command again resumes (and, being finished, trains nothing)
    again = CliRunner().invoke(train_cmd, args, catch_exceptions=False)
    assert again.exit_code == 0 and "Resuming from" in again.output


def test_production_code_reads_no_test_only_variables() -> None:
    """Tests reach into a run through ``train(..., hooks=TrainHooks(...))``, never the environment."""
    readers = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "torchsae").rglob("*.py"))
        if "TORCHSAE_TEST" in path.read_text(encoding="utf-8")
    ]
    assert readers == []


def test_the_checkpoint_names_its_task_and_the_effective_run_is_computed_once(
    tmp_path: Path, faceset, monkeypatch
) -> None:
    from torchsae.train import trainer

    resolved = []
    original = trainer.resolve_run

    def counting(cfg, info, say):
        resolved.append(original(cfg, info, say))
        return resolved[-1]

    monkeypatch.setattr(trainer, "resolve_run", counting)
    train(tiny_config(tmp_path, faceset, 2, save_interval=1))
    state = ck.load_checkpoint(tmp_path / "models" / "last.pth")
    assert state["task"] == "saehd" and state["version"] == ck.VERSION and state["step"] == 2
    assert len(resolved) == 1 and resolved[0].accum == 1 and resolved[0].global_batch == 2
