"""``torchsae export-dfl``: a TorchSAE checkpoint -> a DeepFaceLab SAEHD model folder, and back.

* The shipped real DeepFaceLab folder, imported and exported again, gives back the same files: the
  same keys, shapes and bit-identical arrays for weights and optimizer moments (in fact the same
  bytes), and the same options with DeepFaceLab's types and order.
* A trained TorchSAE checkpoint (DF and LIAE, u/d/t/c variants, discriminators), exported and
  imported again, gives the same weights, moments and outputs.
* What DeepFaceLab cannot express is a one-line error; TorchSAE-only settings are one warning line;
  existing model files are kept unless ``--force``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from torchsae.cli import main
from torchsae.config import Config, ModelConfig
from torchsae.convert.dfl_import import import_dfl_model
from torchsae.dfl.model_writer import summary_text
from torchsae.dfl.unpickle import restricted_loads
from torchsae.models import SAEHD, CodeDiscriminator, UNetPatchDiscriminator
from torchsae.optim import build_optimizer
from torchsae.train.checkpoint import load_checkpoint, save_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "dfl_models" / "a_df-ud_r64"
RES = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def load(path: Path) -> object:
    return restricted_loads(path.read_bytes(), str(path))


@pytest.fixture(scope="module")
def dfl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real DeepFaceLab folder with its real file names (the fixture stores pickles gzipped)."""
    folder = tmp_path_factory.mktemp("dfl") / "model"
    folder.mkdir()
    for path in FIXTURE.glob("new_SAEHD_*"):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        (folder / path.name.removesuffix(".gz")).write_bytes(data)
    return folder


def test_real_folder_round_trips_bit_for_bit(dfl_folder: Path, tmp_path: Path) -> None:
    assert run("import-dfl", str(dfl_folder), "--output", str(tmp_path / "imported.pth")).exit_code == 0
    out = tmp_path / "back"
    result = run("export-dfl", "--checkpoint", str(tmp_path / "imported.pth"), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output  # nothing TorchSAE-only to drop in an untouched import
    names = ["encoder", "inter", "decoder_src", "decoder_dst", "src_dst_opt"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"new_SAEHD_{n}.npy" for n in names] + ["new_SAEHD_data.dat", "new_SAEHD_summary.txt"]
    )
    for name in names:
        original, written = dfl_folder / f"new_SAEHD_{name}.npy", out / f"new_SAEHD_{name}.npy"
        a, b = load(original), load(written)
        assert list(a) == list(b), name  # same keys, same order
        for key in a:
            assert type(a[key]) is type(b[key]) and a[key].dtype == b[key].dtype, key
            assert a[key].shape == b[key].shape and a[key].tobytes() == b[key].tobytes(), key
        assert written.read_bytes() == original.read_bytes(), name  # even the pickle bytes
        assert b"numpy._core" not in written.read_bytes()  # numpy-1 DeepFaceLab can read it
    before, after = load(dfl_folder / "new_SAEHD_data.dat"), load(out / "new_SAEHD_data.dat")
    assert list(after) == ["iter", "options", "loss_history", "sample_for_preview", "choosed_gpu_indexes"]
    assert after["iter"] == before["iter"] == 12345
    assert list(after["options"]) == list(before["options"])
    for key, value in before["options"].items():
        assert type(after["options"][key]) is type(value) and after["options"][key] == value, key
    # TorchSAE logs every 10th step; DeepFaceLab's per-iteration history holds each logged value
    history = after["loss_history"]
    assert history[-1] == before["loss_history"][-6] and len(history) == 96
    assert b"numpy._core" not in (out / "new_SAEHD_data.dat").read_bytes()


def test_summary_has_deepfacelab_layout() -> None:
    data = load(FIXTURE / "new_SAEHD_data.dat")
    text = summary_text("new", data["iter"], data["options"], [("Using device", "CPU")])
    assert text == (FIXTURE / "new_SAEHD_summary.txt").read_text()


# (archi, changes): every variant letter in both families; the discriminators on a DF model
CASES = {
    "df-ud": {},
    "df-udtc": {"loss": {"true_face_power": 0.01, "gan_power": 0.1}, "optim": {"optimizer": "rmsprop"}},
    "liae-ud": {"data": {"random_warp": False}, "optim": {"lr_dropout": True}},
    "liae-udtc": {"loss": {"gan_power": 0.1}},
}


def trained_checkpoint(archi: str, path: Path) -> tuple[Config, SAEHD, dict]:
    """A checkpoint after two training steps: non-zero moments, discriminators, a loss history."""
    torch.manual_seed(0)
    model_cfg = ModelConfig(
        archi=archi, resolution=RES, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=8, gan_patch_size=8
    )
    cfg = Config(model=model_cfg).updated(CASES[archi]).validate()
    model = SAEHD(cfg.model)
    trainable = {id(p) for p in model.trainable_parameters(cfg.data.random_warp)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opts = {"model": build_optimizer(model.parameters(), cfg.optim)}
    discs = {}
    if cfg.loss.true_face_power > 0:
        discs["code"] = CodeDiscriminator(model.code_channels, model.code_resolution)
    if cfg.loss.gan_power > 0:
        discs["gan"] = UNetPatchDiscriminator(cfg.model.resolved_gan_patch_size, 3, cfg.model.gan_dims)
    opts.update({name: build_optimizer(d.parameters(), cfg.optim) for name, d in discs.items()})
    for _ in range(2):
        out = model(torch.rand(2, 3, RES, RES), torch.rand(2, 3, RES, RES))
        loss = sum(v.square().mean() for v in out.values())
        if "code" in discs:
            loss = loss + discs["code"](out["code_a"]).square().mean()
        if "gan" in discs:
            loss = loss + sum(x.square().mean() for x in discs["gan"](out["pred_bb"]))
        for opt in opts.values():
            opt.zero_grad()
        loss.backward()
        for opt in opts.values():
            opt.step()
    state = {
        "step": 20,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in opts.items()},
        "discriminators": {name: d.state_dict() for name, d in discs.items()},
        "metrics": {"history": {"loss_a": [[10, 0.5], [20, 0.25]], "loss_b": [[10, 0.75], [20, 0.5]]}},
    }
    save_checkpoint(path, state)
    return cfg, model.eval(), state


@pytest.mark.parametrize("archi", list(CASES))
def test_trained_checkpoint_round_trips(archi: str, tmp_path: Path) -> None:
    cfg, model, state = trained_checkpoint(archi, tmp_path / "last.pth")
    out = tmp_path / "workspace" / "model"
    result = run("export-dfl", "--checkpoint", str(tmp_path / "last.pth"), "--output", str(out))
    assert result.exit_code == 0, result.output
    data = load(out / "torchsae_SAEHD_data.dat")
    assert data["iter"] == 20 and data["options"]["archi"] == archi
    assert isinstance(data["options"]["resolution"], np.int64)
    assert data["loss_history"] == [[0.75, 0.5]] * 10 + [[0.5, 0.25]]  # [src=B, dst=A] per iteration
    imported = import_dfl_model(out, tmp_path / "back.pth")
    back = load_checkpoint(tmp_path / "back.pth")
    assert back["step"] == 20
    again = Config.from_dict(back["config"])
    for section in ("model", "loss", "optim", "data"):
        assert getattr(again, section) == getattr(cfg, section), section
    for key, value in state["model"].items():
        assert torch.equal(back["model"][key], value), key
    assert set(back["discriminators"]) == set(state["discriminators"])
    for name, disc_state in state["discriminators"].items():
        for key, value in disc_state.items():
            assert torch.equal(back["discriminators"][name][key], value), (name, key)
    assert set(imported.optimizers) == set(state["optimizers"])
    for name, opt_state in state["optimizers"].items():
        for index, slots in opt_state["state"].items():
            for slot in ("exp_avg", "exp_avg_var", "square_avg"):
                if slot in slots:
                    assert torch.equal(back["optimizers"][name]["state"][index][slot], slots[slot]), (
                        name,
                        index,
                    )
    again_model = SAEHD(again.model).eval()
    again_model.load_state_dict(back["model"])
    faces = torch.rand(3, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ours, theirs in zip(again_model.swap(faces), model.swap(faces), strict=True):
            assert (ours - theirs).abs().max() <= 1e-6


def test_frozen_inter_ab_gets_zero_moments(tmp_path: Path) -> None:
    """LIAE without random warp never updates inter_AB; DeepFaceLab still keeps (zero) slots for it."""
    trained_checkpoint("liae-ud", tmp_path / "last.pth")
    assert (
        run(
            "export-dfl", "--checkpoint", str(tmp_path / "last.pth"), "--output", str(tmp_path / "m")
        ).exit_code
        == 0
    )
    opt = load(tmp_path / "m" / "torchsae_SAEHD_src_dst_opt.npy")
    inter_ab = [k for k in opt if k.startswith(("ms_inter_AB/", "vs_inter_AB/"))]
    assert inter_ab and all(not opt[k].any() for k in inter_ab)
    assert any(opt[k].any() for k in opt if k.startswith("ms_encoder/"))
    assert opt["iters:0"] == 20 and isinstance(opt["iters:0"], np.int64)


def test_existing_files_need_force(tmp_path: Path) -> None:
    trained_checkpoint("df-ud", tmp_path / "last.pth")
    out = tmp_path / "model"
    out.mkdir()
    keep = out / "mine_SAEHD_data.dat"
    keep.write_bytes(b"another model")
    args = [
        "export-dfl",
        "--checkpoint",
        str(tmp_path / "last.pth"),
        "--output",
        str(out),
        "--model-name",
        "mine",
    ]
    result = run(*args)
    assert result.exit_code == 1 and "--force" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == [
        "mine_SAEHD_data.dat"
    ] and keep.read_bytes() == b"another model"
    assert run(*args, "--force").exit_code == 0
    assert load(keep)["iter"] == 20
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"resolution": 32}}, "resolution 32 cannot be a DeepFaceLab model"),
        ({"model": {"resolution": 704}}, "DeepFaceLab's SAEHD takes 64-640"),
        ({"model": {"ae_dims": 2048}}, "above DeepFaceLab's maximum 1024"),
    ],
)
def test_inexpressible_models_are_one_line_errors(tmp_path: Path, changes: dict, message: str) -> None:
    model_cfg = ModelConfig(archi="df", resolution=64, ae_dims=16, e_dims=8, d_dims=8, d_mask_dims=8)
    cfg = Config(model=model_cfg).updated(changes)
    state = {"step": 5, "config": cfg.to_dict(), "model": {}}
    save_checkpoint(tmp_path / "last.pth", state)
    result = run("export-dfl", "--checkpoint", str(tmp_path / "last.pth"), "--output", str(tmp_path / "m"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "m").exists()


def test_step_zero_is_refused(tmp_path: Path) -> None:
    cfg, _, state = trained_checkpoint("df-ud", tmp_path / "last.pth")
    save_checkpoint(tmp_path / "zero.pth", {**state, "step": 0})
    result = run("export-dfl", "--checkpoint", str(tmp_path / "zero.pth"), "--output", str(tmp_path / "m"))
    assert result.exit_code == 1 and "iteration 0 as a new model" in result.output
    assert not (tmp_path / "m").exists()


def test_torchsae_only_settings_are_reported_in_one_line(tmp_path: Path) -> None:
    cfg, _, state = trained_checkpoint("df-ud", tmp_path / "last.pth")
    changed = cfg.updated({"optim": {"lr": 1e-4}, "train": {"amp": "bf16", "max_steps": 5000}})
    save_checkpoint(tmp_path / "tuned.pth", {**state, "config": changed.to_dict()})
    result = run("export-dfl", "--checkpoint", str(tmp_path / "tuned.pth"), "--output", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1
    for text in ("optim.lr=0.0001", "train.amp='bf16'", "train.max_steps=5000"):
        assert text in warnings[0]
    assert load(tmp_path / "m" / "torchsae_SAEHD_data.dat")["options"]["target_iter"] == 0
