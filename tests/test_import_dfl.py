"""``torchsae import-dfl`` on the real DeepFaceLab folder (tests/fixtures/dfl_models/a_df-ud_r64).

The references are DeepFaceLab's own: its options as its summary file prints them, its optimizer
pickle, its outputs in ``reference_io.npz`` and its own ``.dfm``. The imported checkpoint must give
the same swap, masks and reconstructions within 1e-5 through PyTorch and through our ``.dfm`` in ONNX
Runtime, and our ``.dfm`` must agree with DeepFaceLab's within 1e-5.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_deepfacelive import DeepFaceLiveDfm
from helpers_dfl_layout import tf_name
from helpers_dfl_reference import DFL_MODEL_DIR, assert_matches_reference_outputs

from torchsae.cli import main
from torchsae.dfl.unpickle import restricted_loads
from torchsae.export.source import load_model_for_export
from torchsae.train.checkpoint import load_checkpoint

FIXTURE = DFL_MODEL_DIR
ITERATION = 12345
TOL = 1e-5
# SAEHD attribute -> DeepFaceLab scope (src = B, dst = A)
DF_SCOPES = {"encoder": "encoder", "inter": "inter", "decoder_b": "decoder_src", "decoder_a": "decoder_dst"}


def unpack_fixture(target: Path) -> Path:
    """The fixture folder under its real DeepFaceLab names (weight pickles gunzipped)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in FIXTURE.iterdir():
        if path.suffix == ".gz":
            (target / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        elif path.suffix in (".dat", ".txt"):
            (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(DeepFaceLab folder, imported checkpoint, CLI output) for the whole module."""
    root = tmp_path_factory.mktemp("dfl")
    folder = unpack_fixture(root / "model")
    output = root / "run" / "models" / "imported.pth"
    result = CliRunner().invoke(main, ["import-dfl", str(folder), "--output", str(output)])
    assert result.exit_code == 0, result.output
    return folder, output, result.output


def test_cli_reports_the_import_and_warns_about_unsupported_options(imported) -> None:
    _, output, text = imported
    assert f"step {ITERATION}" in text and "df-ud 64px wf" in text and "adabelief" in text
    warning = next(line for line in text.splitlines() if line.startswith("Warning:"))
    for name in ("models_opt_on_gpu=True", "autobackup_hour=0", "write_preview_history=False"):
        assert name in warning
    assert "target_iter" not in warning  # carried over as max_steps
    assert f"torchsae train --resume {output}" in text


def test_config_carries_every_option(imported) -> None:
    """The values of new_SAEHD_summary.txt, typed out, with src -> B and dst -> A."""
    state = load_checkpoint(imported[1])
    assert state["step"] == ITERATION
    cfg = state["config"]
    assert cfg["model"] == {
        "archi": "df-ud",
        "resolution": 64,
        "face_type": "wf",
        "ae_dims": 32,
        "e_dims": 16,
        "d_dims": 16,
        "d_mask_dims": 16,
        "gan_patch_size": 8,
        "gan_dims": 16,
    }
    assert cfg["loss"] == {
        "masked_training": True,
        "eyes_mouth_prio": False,
        "face_style_power": 0.0,
        "bg_style_power": 0.0,
        "true_face_power": 0.0,
        "gan_power": 0.0,
        "blur_out_mask": False,
    }
    data = cfg["data"]
    assert (data["random_warp"], data["random_flip_a"], data["random_flip_b"]) == (True, True, False)
    assert (data["random_hsv_power"], data["ct_mode"], data["uniform_yaw"]) == (0.0, "none", False)
    assert cfg["optim"] == {"optimizer": "adabelief", "lr": 5e-5, "lr_dropout": False, "clipgrad": False}
    assert cfg["train"]["batch_size"] == 2 and cfg["train"]["pretrain"] is False
    assert cfg["train"]["max_steps"] > ITERATION  # a resume trains instead of stopping at once
    assert isinstance(cfg["model"]["resolution"], int)  # numpy.int64 converted to plain types


def test_imported_model_reproduces_deepfacelab_outputs(imported) -> None:
    ref = np.load(FIXTURE / "reference_io.npz")
    model, _, step = load_model_for_export(imported[1])
    assert step == ITERATION
    assert_matches_reference_outputs(model, ref, TOL)
    # src/dst really differ in this model: swapping the decoders would fail the comparison above
    assert np.abs(ref["recon_src"] - ref["recon_dst"]).max() > 0.05


def test_optimizer_moments_are_deepfacelabs(imported) -> None:
    """Every ms_/vs_ slot lands on its parameter, transposed like the weight (checked by hand here)."""
    folder, output, _ = imported
    slots = restricted_loads((folder / "new_SAEHD_src_dst_opt.npy").read_bytes(), "opt")
    state = load_checkpoint(output)
    opt = state["optimizers"]["model"]
    model, _, _ = load_model_for_export(output)
    names = [name for name, _ in model.named_parameters()]
    assert sorted(opt["state"]) == list(range(len(names))) and len(slots) == 1 + 2 * len(names)
    assert opt["param_groups"][0]["params"] == list(range(len(names)))
    for index, name in enumerate(names):
        top, rest = name.split(".", 1)
        for prefix, state_name in (("ms_", "exp_avg"), ("vs_", "exp_avg_var")):
            theirs = slots[f"{prefix}{DF_SCOPES[top]}/{tf_name(rest)[:-2]}_0:0"]
            if theirs.ndim == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
                theirs = theirs.transpose(3, 2, 0, 1)
            elif theirs.ndim == 2:  # (in, out) -> (out, in)
                theirs = theirs.T
            ours = opt["state"][index][state_name]
            assert ours.shape == model.get_parameter(name).shape
            np.testing.assert_array_equal(ours.numpy(), theirs, err_msg=f"{name} {state_name}")
    assert any(float(s["exp_avg"].abs().max()) > 0 for s in opt["state"].values())
    assert state["discriminators"] == {} and set(state["optimizers"]) == {"model"}


def test_loss_history_becomes_the_logged_history(imported) -> None:
    folder, output, _ = imported
    history = restricted_loads((folder / "new_SAEHD_data.dat").read_bytes(), "data")["loss_history"]
    first = ITERATION - len(history) + 1
    logged = load_checkpoint(output)["metrics"]["history"]
    steps = [step for step, _ in logged["loss_a"]]
    assert steps == [s for s in range(first, ITERATION + 1) if s % 10 == 0]
    for (step, loss_a), (step_b, loss_b) in zip(logged["loss_a"], logged["loss_b"], strict=True):
        assert step == step_b
        src, dst = history[step - first]
        assert (loss_a, loss_b) == (dst, src)  # A is dst, B is src


def test_dfm_export_matches_deepfacelab_and_its_own_dfm(imported, tmp_path: Path) -> None:
    """``torchsae export --layout dfm`` of the import, in ONNX Runtime, against DFL's outputs and .dfm."""
    ours = tmp_path / "ours.dfm"
    result = CliRunner().invoke(
        main, ["export", "--checkpoint", str(imported[1]), "--output", str(ours), "--layout", "dfm"]
    )
    assert result.exit_code == 0, result.output
    theirs = tmp_path / "theirs.dfm"
    theirs.write_bytes(gzip.decompress((FIXTURE / "new_SAEHD_model.dfm.gz").read_bytes()))
    ref = np.load(FIXTURE / "reference_io.npz")
    # both through DeepFaceLive's loader double: literal names 'in_face:0', outputs by position
    session, dfl_session = DeepFaceLiveDfm(ours), DeepFaceLiveDfm(theirs)
    face = ref["in_face"].astype(np.float32)
    for batch in (slice(0, 1), slice(0, 3)):
        outputs = session.convert(face[batch])
        for name, array in zip(
            ("out_face_mask", "out_celeb_face", "out_celeb_face_mask"), outputs, strict=True
        ):
            np.testing.assert_allclose(array, ref[name][batch], atol=TOL, rtol=0, err_msg=name)
    random_faces = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    for faces in (face, random_faces):
        a = session.convert(faces)
        b = dfl_session.convert(faces)
        for position, (x, y) in enumerate(zip(a, b, strict=True)):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, atol=TOL, rtol=0, err_msg=f"output {position}")


def test_dfl_package_stays_torch_free() -> None:
    """Listing models and mapping options must not import torch (the importer loads it lazily)."""
    code = (
        "import sys, pkgutil, importlib, torchsae.dfl, torchsae.convert.dfl_import, "
        "torchsae.convert.dfl_export, torchsae.cli.import_dfl; "
        "[importlib.import_module('torchsae.dfl.' + m.name) for m in pkgutil.iter_modules(torchsae.dfl.__path__)]; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"lr_dropout": "cpu"}, {"lr_dropout": True, "optimizer": "adabelief"}),
        ({"lr_dropout": "y", "adabelief": False}, {"lr_dropout": True, "optimizer": "rmsprop"}),
        ({"lr_dropout": True}, {"lr_dropout": True}),  # DeepFaceLab before 2020-07 stored a bool
        ({"lr_dropout": "n"}, {"lr_dropout": False}),
        ({"adabelief": None}, {"optimizer": "rmsprop"}),  # option absent: a pre-AdaBelief model
        ({"target_iter": 20000}, {"max_steps": 20000}),
        ({"target_iter": 500}, {"max_steps": 1000 + 200_000}),  # already reached: iteration + default
        ({"loss_function": "SSIM"}, {"unsupported": "loss_function"}),  # a fork's option
    ],
)
def test_option_rules(changes: dict, expected: dict) -> None:
    from torchsae.dfl.model_options import DFLModelData, options_to_config

    options = restricted_loads((FIXTURE / "new_SAEHD_data.dat").read_bytes(), "data")["options"]
    options.update(changes)
    options = {k: v for k, v in options.items() if v is not None}
    result = options_to_config(DFLModelData(Path("x_SAEHD_data.dat"), "x", 1000, options))
    cfg = result.config
    got = {
        "lr_dropout": cfg.optim.lr_dropout,
        "optimizer": cfg.optim.optimizer,
        "max_steps": cfg.train.max_steps,
    }
    for key, value in expected.items():
        if key == "unsupported":
            assert value in result.unsupported
        else:
            assert got[key] == value, key
