"""How `torchsae train` resolves its Config: flags over file over checkpoint/preset over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from torchsae.cli.train import OPTION_MAP, flags_to_overrides, train_cmd
from torchsae.config import PRESETS, Config, ModelConfig
from torchsae.errors import ConfigError
from torchsae.train.checkpoint import save_checkpoint
from torchsae.train.precision import resolve_amp
from torchsae.train.runconfig import resolve_run_config


def _parse(args: list[str]) -> dict:
    """The keyword arguments click hands to train_cmd for ``args`` (the command itself not run)."""
    ctx = train_cmd.make_context("train", list(args))
    return dict(ctx.params)


def test_every_option_maps_to_a_real_config_field() -> None:
    defaults = Config().to_dict()
    for name, (section, key) in OPTION_MAP.items():
        assert key in defaults[section], name
    params = {p.name for p in train_cmd.params}
    assert set(OPTION_MAP) <= params


def test_unset_flags_are_not_overrides() -> None:
    params = _parse([])
    assert flags_to_overrides(params) == {}
    params = _parse(["--no-random-warp", "--random-flip-b", "--lr", "1e-4", "--amp", "--batch-size", "4"])
    assert flags_to_overrides(params) == {
        "data": {"random_warp": False, "random_flip_b": True},
        "optim": {"lr": 1e-4},
        "train": {"batch_size": 4, "amp": "auto"},
    }
    assert flags_to_overrides(_parse(["--amp", "fp16"]))["train"]["amp"] == "fp16"


def test_precedence_defaults_preset_file_flags(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("train:\n  batch_size: 3\n  max_steps: 77\nmodel:\n  ae_dims: 320\n")
    flags = {"train": {"max_steps": 99, "run_dir": str(tmp_path)}}
    config, resume = resolve_run_config(flags, config_file=file, model_size=256)
    assert resume is None
    assert config.model.resolution == 256 and config.model.archi == PRESETS[256]["archi"]  # preset
    assert config.model.ae_dims == 320  # file over preset
    assert config.train.batch_size == 3  # file over default
    assert config.train.max_steps == 99  # flag over file
    assert config.optim.lr == Config().optim.lr  # untouched default


def test_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resolution 100"):
        resolve_run_config({"model": {"resolution": 100}, "train": {"run_dir": str(tmp_path)}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml.*batch_sise"):
        resolve_run_config({}, config_file=bad)


def _write_run(run: Path) -> Path:
    cfg = Config()
    cfg.model = ModelConfig(archi="df", resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4)
    cfg.data.data_dir_a, cfg.data.data_dir_b = "faces/A", "faces/B"
    cfg.train.run_dir = str(run)
    cfg.train.max_steps = 10
    path = run / "models" / "last.pth"
    save_checkpoint(path, {"step": 5, "config": cfg.to_dict(), "model": {"w": torch.zeros(1)}})
    return path


def test_resume_takes_the_checkpoint_config_and_flags_override_it(tmp_path: Path) -> None:
    path = _write_run(tmp_path / "run")
    config, resume = resolve_run_config({}, resume=path)
    assert resume == path
    assert config.model.archi == "df" and config.data.data_dir_a == "faces/A"
    assert config.train.run_dir == str(tmp_path / "run")  # the run folder of models/last.pth
    config, _ = resolve_run_config({"train": {"max_steps": 20}, "model": {"archi": "df"}}, resume=path)
    assert config.train.max_steps == 20


def test_restarting_the_same_command_resumes_automatically(tmp_path: Path) -> None:
    path = _write_run(tmp_path / "run")
    config, resume = resolve_run_config({"train": {"run_dir": str(tmp_path / "run")}})
    assert resume == path and config.model.resolution == 32
    _, resume = resolve_run_config({"train": {"run_dir": str(tmp_path / "other")}})
    assert resume is None


def test_contradicting_the_checkpoint_architecture_is_an_error(tmp_path: Path) -> None:
    path = _write_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"last.pth: .*archi: checkpoint 'df', asked 'liae-ud'"):
        resolve_run_config({"model": {"archi": "liae-ud"}}, resume=path)
    with pytest.raises(ConfigError, match=r"resolution: checkpoint 32, asked 128"):
        resolve_run_config({"train": {"run_dir": str(tmp_path / "run")}}, model_size=128)


def test_cli_prints_one_line_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cmd, ["--run-dir", str(tmp_path), "--resolution", "100"])
    assert result.exit_code == 1
    assert "Error: resolution (--resolution) 100" in result.output and "Traceback" not in result.output


def test_amp_resolution_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) == (None, False)
    assert resolve_amp("auto", cpu) == (torch.bfloat16, False)
    assert resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    assert resolve_amp("fp16", cpu) == (torch.float16, True)
