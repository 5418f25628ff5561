"""SAEHD training options end to end (issue 10): every option on at once, exact resume, pretraining
and leaving it, the colour and yaw options reaching the data pipeline, and the CLI surface."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_train_support import TINY_FLAGS, make_faceset, tiny_config

from pipelines.batch import make_train_batches
from pipelines.yaw import UniformYawStream
from torchsae.cli.train import train_cmd
from torchsae.config import Config, ModelConfig
from torchsae.errors import ConfigError
from torchsae.losses import SAEHDLoss
from torchsae.models import SAEHD
from torchsae.train import checkpoint as ck
from torchsae.train.adversarial import build_discriminators
from torchsae.train.pretrain import effective_config, pretrain_view, reinit_inters
from torchsae.train.runconfig import resolve_run_config
from torchsae.train.trainer import state_digest, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_faceset(tmp_path_factory.mktemp("faces"))


def all_options(run_dir: Path, faceset: tuple[Path, Path], steps: int) -> Config:
    """Every SAEHD option on at once, on a tiny DF model (true face power needs DF)."""
    cfg = tiny_config(run_dir, faceset, steps)
    cfg.model = ModelConfig(
        archi="df-ud",
        resolution=32,
        ae_dims=16,
        e_dims=8,
        d_dims=8,
        d_mask_dims=4,
        gan_patch_size=8,
        gan_dims=4,
    )
    loss = cfg.loss
    loss.gan_power, loss.true_face_power = 0.1, 0.01
    loss.face_style_power, loss.bg_style_power = 10.0, 10.0
    loss.blur_out_mask = loss.eyes_mouth_prio = True
    cfg.data.uniform_yaw, cfg.data.ct_mode, cfg.data.random_hsv_power = True, "rct", 0.05
    cfg.optim.lr_dropout = cfg.optim.clipgrad = True
    return cfg.validate()


def _assert_same(a: dict, b: dict) -> None:
    assert state_digest(a["model"]) == state_digest(b["model"])
    assert a["discriminators"].keys() == b["discriminators"].keys() == {"code", "gan"}
    for name in a["discriminators"]:
        assert state_digest(a["discriminators"][name]) == state_digest(b["discriminators"][name])
    assert a["optimizers"].keys() == b["optimizers"].keys() == {"model", "code", "gan"}
    for name, opt in a["optimizers"].items():
        other = b["optimizers"][name]
        for key, state in opt["state"].items():
            for field, value in state.items():
                assert torch.equal(value, other["state"][key][field]), (name, key, field)
        for device, rng in opt["lr_dropout_rng"].items():
            assert torch.equal(rng, other["lr_dropout_rng"][device]), name
    assert a["data"] == b["data"]


def test_every_option_at_once_stays_finite_and_resumes_bitwise(tmp_path: Path, faceset) -> None:
    steps = 4
    straight = train(all_options(tmp_path / "straight", faceset, steps))
    assert straight.step == steps and straight.skipped_steps == 0
    train(all_options(tmp_path / "split", faceset, steps // 2))
    resumed = train(
        all_options(tmp_path / "split", faceset, steps), resume=tmp_path / "split/models/last.pth"
    )
    assert resumed.step == steps and resumed.skipped_steps == 0

    a = ck.load_checkpoint(tmp_path / "straight/models/last.pth")
    b = ck.load_checkpoint(tmp_path / "split/models/last.pth")
    _assert_same(a, b)
    for state in (a["model"], *a["discriminators"].values()):
        assert all(torch.isfinite(v).all() for v in state.values())
    # the discriminators really trained (their own steps ran), starting from the trainer's init
    cfg = all_options(tmp_path / "x", faceset, 1)
    torch.manual_seed(cfg.train.seed)
    model = SAEHD(cfg.model)
    initial = build_discriminators(cfg, model, SAEHDLoss(cfg), torch.device("cpu"))
    for name, disc in initial.items():
        assert state_digest(disc.state_dict()) != state_digest(a["discriminators"][name])
    assert a["optimizers"]["code"]["state"] and a["optimizers"]["gan"]["state"]


def test_without_gan_or_true_face_no_discriminator_is_created(tmp_path: Path, faceset) -> None:
    cfg = tiny_config(tmp_path, faceset, 1)
    cfg.model.gan_dims = 4  # a GAN shape alone does not create the discriminator
    train(cfg)
    state = ck.load_checkpoint(tmp_path / "models/last.pth")
    assert state["discriminators"] == {} and set(state["optimizers"]) == {"model"}


def test_true_face_with_liae_is_a_one_line_cli_error(tmp_path: Path, faceset) -> None:
    args = ["--data-dir-a", str(faceset[0]), "--data-dir-b", str(faceset[1]), "--run-dir", str(tmp_path)]
    result = CliRunner().invoke(train_cmd, [*args, *TINY_FLAGS, "--true-face-power", "0.01"])
    assert result.exit_code != 0
    assert "true_face_power" in result.output and "'df'" in result.output
    assert not (tmp_path / "models").exists()


def test_every_option_is_in_train_help() -> None:
    text = CliRunner().invoke(train_cmd, ["--help"], terminal_width=200).output
    for flag in (
        "--gan-power",
        "--gan-patch-size",
        "--gan-dims",
        "--true-face-power",
        "--face-style-power",
        "--bg-style-power",
        "--blur-out-mask",
        "--pretrain / --no-pretrain",
        "--pretrain-dir",
        "--uniform-yaw",
        "--ct-mode [none|rct|lct|mkl|idt|sot]",
        "--random-hsv-power",
    ):
        assert flag in text, flag


def test_pretrain_view_forces_dfl_settings_and_needs_a_folder() -> None:
    cfg = Config()
    cfg.data.random_hsv_power, cfg.data.ct_mode, cfg.data.random_flip_b = 0.1, "sot", False
    assert pretrain_view(cfg) is cfg  # not pretraining: nothing changes
    cfg.train.pretrain = True
    with pytest.raises(ConfigError, match="pretrain_dir"):
        pretrain_view(cfg)
    cfg.data.pretrain_dir = "/faces/generic"
    view = pretrain_view(cfg)
    d = view.data
    assert d.data_dir_a == d.data_dir_b == "/faces/generic"
    assert (d.random_warp, d.random_flip_a, d.random_flip_b, d.uniform_yaw) == (False, True, True, True)
    assert (d.random_hsv_power, d.ct_mode) == (0.0, "none")
    assert cfg.data.ct_mode == "sot" and cfg.data.random_warp  # the user's config is left alone
    cfg.data.pretrain_dir, cfg.data.backend = None, "synthetic"  # benchmarks need no folder
    assert pretrain_view(cfg).data.uniform_yaw


def test_effective_config_is_the_whole_pretraining_config() -> None:
    """One function gives everything pretraining forces: data (above), loss and optimiser."""
    cfg = Config()
    cfg.loss.face_style_power, cfg.loss.bg_style_power, cfg.loss.gan_power = 10.0, 5.0, 1.0
    cfg.loss.true_face_power, cfg.optim.lr_dropout = 0.1, True
    cfg.model.archi = "df-ud"
    assert effective_config(cfg) is cfg
    cfg.train.pretrain, cfg.data.pretrain_dir = True, "/faces/generic"
    eff = effective_config(cfg)
    assert (eff.loss.face_style_power, eff.loss.bg_style_power, eff.loss.gan_power) == (0.0, 0.0, 0.0)
    assert eff.loss.true_face_power == 0.1 and not eff.optim.lr_dropout  # the true-face G term stays
    assert cfg.loss.gan_power == 1.0 and cfg.optim.lr_dropout  # the user's config is left alone
    assert pretrain_view is effective_config


def test_reinit_inters_touches_only_the_inters(tmp_path: Path) -> None:
    for archi, names in (("df-ud", {"inter"}), ("liae-ud", {"inter_ab", "inter_b"})):
        model_cfg = ModelConfig(archi=archi, resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4)
        torch.manual_seed(0)
        model = SAEHD(model_cfg)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        assert set(reinit_inters(model, seed=3)) == names
        assert torch.equal(torch.get_rng_state(), rng)  # the training RNG streams are not shifted
        after = model.state_dict()
        for key, value in after.items():
            moved = not torch.equal(value, before[key])
            is_inter = key.split(".")[0] in names
            if key.endswith("weight"):
                assert moved == is_inter, key
            else:
                assert moved is False or is_inter, key  # biases are zero before and after
        twin = SAEHD(model_cfg)
        twin.load_state_dict(before)
        reinit_inters(twin, seed=3)
        assert state_digest(twin.state_dict()) == state_digest(after)


def _rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_pretrain_then_leave_it(tmp_path: Path, faceset, capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(tmp_path, faceset, 2)
    cfg.data.data_dir_a = cfg.data.data_dir_b = None
    cfg.data.pretrain_dir = str(faceset[0])
    cfg.train.pretrain = True
    cfg.loss.gan_power = 0.5  # forced off while pretraining: no discriminator
    torch.manual_seed(cfg.train.seed)
    initial = SAEHD(cfg.model).state_dict()
    train(cfg.validate())
    pre = ck.load_checkpoint(tmp_path / "models/last.pth")
    assert pre["step"] == 2 and pre["config"]["train"]["pretrain"]
    assert pre["config"]["data"]["random_warp"] and pre["config"]["data"]["data_dir_a"] is None
    assert pre["discriminators"] == {}
    # LIAE with the forced warp-off trains without inter_ab, as DeepFaceLab does
    for key, value in pre["model"].items():
        if key.startswith("inter_ab."):
            assert torch.equal(value, initial[key]), key

    # resuming without --pretrain leaves pretraining
    flags = {
        "data": {"data_dir_a": str(faceset[0]), "data_dir_b": str(faceset[1])},
        "train": {"max_steps": 1},
    }
    config, resume = resolve_run_config(flags, resume=tmp_path / "models/last.pth")
    assert resume is not None and config.train.pretrain is False
    assert resolve_run_config({"train": {"pretrain": True}}, resume=resume)[0].train.pretrain
    capsys.readouterr()
    result = train(config, resume=resume)
    assert result.step == 1  # the counter restarted at 0
    assert "leaving pretraining" in capsys.readouterr().out
    after = ck.load_checkpoint(tmp_path / "models/last.pth")
    assert after["step"] == 1 and not after["config"]["train"]["pretrain"]
    assert set(after["discriminators"]) == {"gan"}  # the GAN comes on after pretraining
    for key, value in after["model"].items():
        if not key.endswith("weight"):
            continue
        change = _rel_change(value, pre["model"][key])
        if key.startswith(("inter_ab.", "inter_b.")):
            assert change > 0.5, key  # re-initialised
        else:
            assert change < 0.05, key  # kept: one small optimiser step away


def test_colour_and_yaw_options_reach_the_pipeline(faceset, tmp_path: Path) -> None:
    base = tiny_config(tmp_path, faceset, 1)
    base.data.random_warp = base.data.random_flip_a = False

    def first_batch(**data: object) -> dict[str, torch.Tensor]:
        cfg = base.updated({"data": data})
        batches = make_train_batches(cfg, progress=False)
        try:
            return next(batches)
        finally:
            batches.close()

    plain = first_batch()
    ct = first_batch(ct_mode="rct")
    hsv = first_batch(random_hsv_power=0.2)
    for key in ("warped_a", "target_a", "mask_b"):  # A and the masks are untouched
        assert torch.equal(ct[key], plain[key]) and torch.equal(hsv[key], plain[key])
    assert not torch.equal(ct["target_b"], plain["target_b"])  # ct re-colours warped and target B
    assert not torch.equal(ct["warped_b"], plain["warped_b"])
    assert torch.equal(hsv["target_b"], plain["target_b"])  # HSV only shifts the warped B input
    assert not torch.equal(hsv["warped_b"], plain["warped_b"])

    yaw = make_train_batches(base.updated({"data": {"uniform_yaw": True}}), progress=False)
    assert all(isinstance(loader.stream, UniformYawStream) for loader in yaw.loaders.values())
    yaw.close()
    plain_stream = make_train_batches(base, progress=False)
    assert not any(isinstance(loader.stream, UniformYawStream) for loader in plain_stream.loaders.values())
    plain_stream.close()


def test_gan_shape_may_change_on_resume(tmp_path: Path, faceset, capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(tmp_path, faceset, 1)
    cfg.loss.gan_power, cfg.model.gan_dims = 0.1, 4
    train(cfg.validate())
    last = tmp_path / "models/last.pth"
    with pytest.raises(ConfigError, match="ae_dims"):  # the autoencoder's shape still cannot change
        resolve_run_config({"model": {"ae_dims": 32}}, resume=last)
    config, _ = resolve_run_config({"model": {"gan_dims": 8}, "train": {"max_steps": 2}}, resume=last)
    capsys.readouterr()
    assert train(config, resume=last).step == 2
    assert "starts afresh" in capsys.readouterr().out
    state = ck.load_checkpoint(last)
    assert state["discriminators"]["gan"]["in_conv.weight"].shape[0] == 8
    assert state["config"]["model"]["gan_dims"] == 8


@pytest.mark.slow
def test_two_ranks_with_every_option(tmp_path: Path, faceset) -> None:
    """torchrun, two CPU ranks (gloo): both discriminators under DDP, uniform yaw shards, same weights."""
    import json
    import subprocess
    import sys

    from test_train_support import REPO, subprocess_env

    probe = tmp_path / "probe"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [
        str(REPO / "tests" / "helpers_train_hooks.py"),  # launch/train.py with the probe installed
        *("--probe-dir", str(probe), "--"),
        "--data-dir-a",
        str(faceset[0]),
        "--data-dir-b",
        str(faceset[1]),
    ]
    cmd += ["--run-dir", str(tmp_path / "run"), *TINY_FLAGS, "--archi", "df-ud", "--max-steps", "3"]
    cmd += ["--gan-power", "0.1", "--gan-patch-size", "8", "--gan-dims", "4", "--true-face-power", "0.01"]
    cmd += ["--face-style-power", "10", "--bg-style-power", "10", "--blur-out-mask", "--uniform-yaw"]
    cmd += ["--ct-mode", "rct", "--random-hsv-power", "0.05", "--lr-dropout", "--clipgrad"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = {json.loads((probe / f"rank{r}.json").read_text())["digest"] for r in (0, 1)}
    state = ck.load_checkpoint(tmp_path / "run/models/last.pth")
    assert digests == {state_digest(state["model"])}
    assert set(state["discriminators"]) == {"code", "gan"} and state["step"] == 3


def test_discriminators_train_under_bf16_autocast(tmp_path: Path, faceset) -> None:
    """The G loss calls the discriminators on autocast outputs (bf16 codes): they must run under the
    same autocast, and the D steps too."""
    cfg = all_options(tmp_path, faceset, 1)
    cfg.loss.face_style_power = cfg.loss.bg_style_power = 0.0  # keep the CPU-autocast step short
    cfg.data.uniform_yaw, cfg.data.ct_mode = False, "none"
    cfg.train.amp = "bf16"
    result = train(cfg)
    assert result.step == 1 and result.skipped_steps == 0
    state = ck.load_checkpoint(tmp_path / "models/last.pth")
    assert set(state["optimizers"]["code"]["state"]) and set(state["optimizers"]["gan"]["state"])


def test_new_flags_map_to_their_config_keys() -> None:
    from torchsae.cli.train import flags_to_overrides

    given = {"gan_patch_size": 8, "gan_dims": 4, "blur_out_mask": True, "pretrain": True, "pretrain_dir": "p"}
    assert flags_to_overrides(given) == {
        "model": {"gan_patch_size": 8, "gan_dims": 4},
        "loss": {"blur_out_mask": True},
        "train": {"pretrain": True},
        "data": {"pretrain_dir": "p"},
    }
    cfg = Config().updated(flags_to_overrides(given))
    assert (cfg.model.resolved_gan_patch_size, cfg.model.gan_dims, cfg.loss.blur_out_mask) == (8, 4, True)
