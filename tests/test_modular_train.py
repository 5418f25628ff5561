"""The modular training modes through the generic loop: parts written to the bank, exact resume of
every mode, distillation pulling the student's latent toward the teacher's on held-out faces, adapters
leaving the frozen encoder and decoders bit-identical, previews of the X -> Y swaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_support import make_faceset, tiny_config

from torchsae.config import Config
from torchsae.modular.bank import ModuleBank
from torchsae.modular.tasks import ModularRun, task_factory
from torchsae.train import checkpoint as ck
from torchsae.train.trainer import state_digest, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_faceset(tmp_path_factory.mktemp("faces"))


def modular_config(run_dir: Path, faces: Path, steps: int, **train_opts: object) -> Config:
    cfg = tiny_config(run_dir, (faces, faces), steps, **train_opts)
    cfg.model.archi = "df"
    return cfg.validate()


def _train(run: ModularRun, cfg: Config, resume: Path | None = None):
    return train(cfg, resume=resume, task_factory=task_factory(run))


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory, faceset) -> Path:
    """A bank with two independently trained identities: alice (faces A) and bob (faces B)."""
    root = tmp_path_factory.mktemp("bank")
    folder = root / "bank"
    _train(ModularRun("identity", str(folder), "alice"), modular_config(root / "alice", faceset[0], 2))
    _train(ModularRun("identity", str(folder), "bob"), modular_config(root / "bob", faceset[1], 2))
    return folder


def test_identity_run_writes_its_parts(bank: Path) -> None:
    parts = {(p.identity, p.kind): p for p in ModuleBank(bank).list()}
    assert set(parts) == {("alice", "encoder"), ("alice", "decoder"), ("bob", "encoder"), ("bob", "decoder")}
    alice = parts["alice", "encoder"]
    assert alice.latent.space == "alice" and alice.meta["steps"] == 2 and alice.meta["mode"] == "identity"
    assert parts["bob", "decoder"].latent.space == "bob"


def _copy_bank(bank: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(bank, to)
    return to


RUNS = {
    "identity": lambda b: ModularRun("identity", str(b), "carol"),
    "distill": lambda b: ModularRun("distill", str(b), "carol", teacher="alice", distill_weight=2.0),
    "adapter": lambda b: ModularRun("adapter", str(b), "bob", into="alice"),
}


@pytest.mark.parametrize("mode", list(RUNS))
def test_half_resume_half_is_bitwise_identical(tmp_path: Path, faceset, bank: Path, mode: str) -> None:
    steps, faces = 4, faceset[1]
    straight_bank = _copy_bank(bank, tmp_path / "bank1")
    split_bank = _copy_bank(bank, tmp_path / "bank2")
    _train(RUNS[mode](straight_bank), modular_config(tmp_path / "straight", faces, steps))
    _train(RUNS[mode](split_bank), modular_config(tmp_path / "split", faces, steps // 2))
    resumed = _train(
        RUNS[mode](split_bank),
        modular_config(tmp_path / "split", faces, steps),
        resume=tmp_path / "split" / "models" / "last.pth",
    )
    assert resumed.step == steps
    a = ck.load_checkpoint(tmp_path / "straight" / "models" / "last.pth")
    b = ck.load_checkpoint(tmp_path / "split" / "models" / "last.pth")
    assert a["task"] == b["task"] == f"modular-{mode}"
    assert state_digest(a["model"]) == state_digest(b["model"])
    for key, state in a["optimizers"]["model"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizers"]["model"]["state"][key][name])
    assert a["data"][0] == b["data"][0]
    # the bank holds the final weights of both runs alike
    kind = "adapter" if mode == "adapter" else "encoder"
    who = "bob" if mode == "adapter" else "carol"
    one = ModuleBank(straight_bank).load_part(kind, who)
    two = ModuleBank(split_bank).load_part(kind, who)
    assert state_digest(one[0].state_dict()) == state_digest(two[0].state_dict())
    assert one[2]["steps"] == two[2]["steps"] == steps


def test_resume_refuses_another_mode(tmp_path: Path, faceset, bank: Path) -> None:
    work = _copy_bank(bank, tmp_path / "bank")
    _train(RUNS["identity"](work), modular_config(tmp_path / "run", faceset[1], 1))
    with pytest.raises(Exception, match="modular-identity.*cannot resume a 'modular-distill'"):
        _train(
            RUNS["distill"](work),
            modular_config(tmp_path / "run", faceset[1], 2),
            tmp_path / "run/models/last.pth",
        )


def _held_out_faces(root: Path) -> torch.Tensor:
    """Faces of neither training set (another demo identity pair), at the tiny resolution."""
    from torchsae.train.data import make_preview_samples

    held = make_faceset(root, count=4)
    cfg = modular_config(root / "cfg", held[0], 1)
    cfg.data.data_dir_b = str(held[1])
    samples = make_preview_samples(cfg, 4, torch.device("cpu"))
    return torch.cat([samples["target_a"], samples["target_b"]])


def test_distillation_pulls_the_student_toward_the_teacher(tmp_path: Path, faceset, bank: Path) -> None:
    faces = _held_out_faces(tmp_path / "held")
    teacher = ModuleBank(bank).load_part("encoder", "alice")[0].eval()
    distances = {}
    for weight in (0.0, 20.0):
        work = _copy_bank(bank, tmp_path / f"bank{weight}")
        cfg = modular_config(tmp_path / f"run{weight}", faceset[1], 6)
        cfg.optim.lr = 1e-3
        _train(ModularRun("distill", str(work), "carol", teacher="alice", distill_weight=weight), cfg)
        student, spec, meta = ModuleBank(work).load_part("encoder", "carol")
        assert spec.space == "alice" and meta["teacher"] == "alice"
        with torch.no_grad():
            distances[weight] = float(torch.mean((student.eval()(faces) - teacher(faces)) ** 2))
    assert distances[20.0] < 0.5 * distances[0.0], distances


def test_adapter_leaves_existing_parts_bit_identical(tmp_path: Path, faceset, bank: Path) -> None:
    work = _copy_bank(bank, tmp_path / "bank")
    before = {p.path.name + p.identity: p.path.read_bytes() for p in ModuleBank(work).list()}
    cfg = modular_config(tmp_path / "run", faceset[1], 3, preview_interval=3)
    cfg.optim.lr = 1e-3
    _train(ModularRun("adapter", str(work), "bob", into="alice"), cfg)
    after = {
        p.path.name + p.identity: p.path.read_bytes() for p in ModuleBank(work).list() if p.kind != "adapter"
    }
    assert after == before  # the bank's files of every existing part, byte for byte
    state = ck.load_checkpoint(tmp_path / "run" / "models" / "last.pth")["model"]
    bank_ = ModuleBank(work)
    frozen = {
        "encoder.": bank_.load_part("encoder", "bob")[0],
        "decoder.": bank_.load_part("decoder", "alice")[0],
        "teacher.": bank_.load_part("encoder", "alice")[0],
    }
    for prefix, module in frozen.items():
        trained = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        assert state_digest(trained) == state_digest(module.state_dict()), prefix
    adapter, spec, meta = bank_.load_part("adapter", "bob")
    assert spec.space == "alice" and meta["input_latent"]["space"] == "bob"
    assert any(
        not torch.equal(v, torch.zeros_like(v)) for k, v in adapter.state_dict().items() if "conv2" in k
    )
    # the preview shows bob -> alice through alice's decoder
    assert (tmp_path / "run" / "logs" / "previews" / "step_00000003.png").is_file()
