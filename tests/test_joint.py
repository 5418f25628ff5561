"""Shared encoder, N decoders (DF generalised to N identities): N=2 is DF exactly, N=3 trains through the
generic loop, resumes bitwise, and swaps every ordered pair of identities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchsae.config import Config, ModelConfig
from torchsae.errors import ConfigError
from torchsae.models.registry import build_model
from torchsae.models.shared_n import SharedEncoderN
from torchsae.train import checkpoint as ck
from torchsae.train.joint_task import JointTask, JointTaskFactory
from torchsae.train.saehd_task import SAEHDTask
from torchsae.train.trainer import state_digest, train

pytestmark = pytest.mark.usefixtures("one_thread")

THREE = (("x", None), ("y", None), ("z", None))


def tiny(run_dir: Path, steps: int) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(archi="df-ud", resolution=32, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=4)
    cfg.data.backend = "synthetic"
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.run_dir = 2, steps, str(run_dir)
    cfg.train.device = "cpu"
    cfg.train.save_interval = cfg.train.preview_interval = cfg.train.log_interval = 1
    return cfg.validate()


def test_two_identities_are_df_exactly() -> None:
    cfg = tiny(Path("unused"), 1)
    torch.manual_seed(0)
    df = build_model(cfg.model)
    torch.manual_seed(0)
    joint = SharedEncoderN(cfg.model, ("a", "b"))
    assert tuple(name for name, _ in joint.named_children()) == joint.parts == df.family.parts
    assert state_digest(joint.state_dict()) == state_digest(df.state_dict())
    # the same loss as SAEHD's on the same batch (no style, GAN or true-face terms)
    from pipelines.synthetic import synthetic_batch

    batch = synthetic_batch(2, 32, "cpu", 3, ["a", "b"])
    torch.manual_seed(0)
    saehd = SAEHDTask(cfg, "none", torch.device("cpu"))
    torch.manual_seed(0)
    task = JointTask(cfg, "none", torch.device("cpu"), (("a", None), ("b", None)))
    loss_df, terms_df = saehd.generator_loss(saehd.prepare(batch))
    loss_n, terms_n = task.generator_loss(task.prepare(batch))
    assert torch.equal(loss_df, loss_n)
    assert torch.equal(terms_df["loss_a"], terms_n["loss_a"]) and torch.equal(
        terms_df["loss_b"], terms_n["loss_b"]
    )
    assert tuple((s.name, s.key) for s in task.sides) == (("a", 0), ("b", 1))


def test_three_identities_train_resume_bitwise_and_swap_every_pair(tmp_path: Path) -> None:
    factory = JointTaskFactory(THREE)
    steps = 4
    straight = train(tiny(tmp_path / "straight", steps), task_factory=factory)
    assert straight.step == steps and straight.skipped_steps == 0
    train(tiny(tmp_path / "split", steps // 2), task_factory=factory)
    resumed = train(
        tiny(tmp_path / "split", steps), resume=tmp_path / "split/models/last.pth", task_factory=factory
    )
    assert resumed.step == steps
    a = ck.read_checkpoint(tmp_path / "straight/models/last.pth")
    b = ck.read_checkpoint(tmp_path / "split/models/last.pth")
    assert a.task == b.task == "df-n"
    assert state_digest(a.model) == state_digest(b.model)
    for key, state in a.optimizers["model"]["state"].items():
        for field, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b.optimizers["model"]["state"][key][field]), (key, field)
    assert a.data == b.data
    assert {k.split(".", 1)[0] for k in a.model} == {
        "encoder",
        "inter",
        "decoder_x",
        "decoder_y",
        "decoder_z",
    }
    assert list((tmp_path / "straight/logs/previews").glob("*.png"))

    model = SharedEncoderN(tiny(tmp_path, 1).model, ("x", "y", "z"))
    model.load_state_dict(a.model)
    faces = {name: torch.rand(2, 3, 32, 32) for name in ("x", "y", "z")}
    for source in faces:
        for target in faces:
            swapped, mask = model.swap(faces[source], target)
            assert swapped.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
            assert torch.isfinite(swapped).all()
    # X→Y is decoder_Y(inter(encoder(x)))
    expected = model.decoder_z(model.inter(model.encoder(faces["x"])))[0]
    assert torch.equal(model.swap(faces["x"], "z")[0], expected)


def test_a_saehd_checkpoint_is_refused_and_a_style_term_is_one_line(tmp_path: Path) -> None:
    train(tiny(tmp_path / "df", 1))
    with pytest.raises(Exception, match="task 'saehd'"):
        train(
            tiny(tmp_path / "df", 2),
            resume=tmp_path / "df/models/last.pth",
            task_factory=JointTaskFactory(THREE),
        )
    cfg = tiny(tmp_path / "style", 1)
    cfg.loss.face_style_power = 1.0
    with pytest.raises(ConfigError, match="face_style_power must be 0"):
        JointTask(cfg, "none", torch.device("cpu"), THREE)


def test_the_cli_trains_three_identities_into_a_bank_and_compose_joins_any_pair(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from torchsae.cli import main as cli
    from torchsae.modular.bank import ModuleBank
    from torchsae.modular.compose import composed_swap

    flags = ["--resolution", "32", "--ae-dims", "16", "--e-dims", "8", "--d-dims", "8", "--d-mask-dims", "4"]
    flags += ["--device", "cpu", "--backend", "synthetic", "--batch-size", "2", "--max-steps", "2"]
    ids = [arg for name in ("x", "y", "z") for arg in ("--data-dir", f"{name}={tmp_path / name}")]
    bank = tmp_path / "bank"
    result = CliRunner().invoke(cli, ["train-joint", "--bank", str(bank), *ids, *flags])
    assert result.exit_code == 0, result.output
    assert (bank / "runs/joint/models/last.pth").is_file()
    parts = {(p.identity, p.kind) for p in ModuleBank(bank).list()}
    assert parts == {(n, k) for n in ("x", "y", "z") for k in ("encoder", "decoder")}
    assert {p.latent.space for p in ModuleBank(bank).list()} == {"joint-x-y-z"}
    swapped = composed_swap(ModuleBank(bank), "z", "x").swap(torch.rand(1, 3, 32, 32))[0]
    assert swapped.shape == (1, 3, 32, 32)
    one = CliRunner().invoke(cli, ["train-joint", "--data-dir", f"x={tmp_path}", *flags])
    assert one.exit_code != 0 and "at least two identities" in one.output
