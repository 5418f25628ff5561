"""LIAE, the ``t`` variant and the discriminators: TorchSAE model -> DeepFaceLab layout -> import.

``helpers_dfl_layout`` writes a trained-for-two-steps TorchSAE model the way DeepFaceLab lays out its
folder (names, transposes, optimizer slots, options with numpy types), independently of the importer.
Importing it back must give the same config, bit-identical weights, outputs and optimizer moments, and
a ``.dfm`` whose ONNX Runtime outputs match the original model within 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_deepfacelive import DeepFaceLiveDfm
from helpers_dfl_layout import dfl_options, write_dfl_model

from torchsae.config import Config, ModelConfig
from torchsae.convert.dfl_import import import_dfl_model
from torchsae.export.onnx import export_onnx
from torchsae.export.source import load_model_for_export
from torchsae.models import SAEHD, CodeDiscriminator, UNetPatchDiscriminator
from torchsae.optim import build_optimizer
from torchsae.train.checkpoint import load_checkpoint

RES = 32
ITERATION = 777

CASES = {
    "liae-ud": {  # LIAE without random warp: inter_AB frozen, its slots stay zero
        "data": {"random_warp": False, "random_flip_b": True, "uniform_yaw": True},
        "optim": {"lr_dropout": True},
        "loss": {"eyes_mouth_prio": True, "blur_out_mask": True},
    },
    "df-udt": {  # RMSprop, both discriminators
        "optim": {"optimizer": "rmsprop", "clipgrad": True},
        "loss": {"true_face_power": 0.01, "gan_power": 0.1, "face_style_power": 10.0},
        "data": {"ct_mode": "rct", "random_hsv_power": 0.05},
    },
    "liae-udt": {  # AdaBelief with the GAN
        "loss": {"gan_power": 0.5, "bg_style_power": 5.0, "masked_training": False},
        "data": {"random_flip_a": False},
        "train": {"batch_size": 4},
    },
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_config(archi: str) -> Config:
    model = ModelConfig(
        archi=archi,
        resolution=RES,
        face_type="f",
        ae_dims=16,
        e_dims=8,
        d_dims=8,
        d_mask_dims=8,
        gan_patch_size=8,
    )
    cfg = Config(model=model).updated(CASES[archi])
    cfg.train.max_steps = ITERATION + 1000
    return cfg.validate()


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def trained(cfg: Config) -> tuple[SAEHD, torch.optim.Optimizer, dict]:
    """A model, its optimizer after two steps (non-zero moments) and its discriminators likewise."""
    torch.manual_seed(0)
    model = SAEHD(cfg.model)
    trainable = {id(p) for p in model.trainable_parameters(cfg.data.random_warp)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)  # as the trainer: LIAE without random warp freezes inter_ab
    opt = build_optimizer(model.parameters(), cfg.optim)
    discs: dict = {}
    if cfg.loss.true_face_power > 0:
        disc = CodeDiscriminator(model.code_channels, model.code_resolution)
        discs["code"] = (disc, build_optimizer(disc.parameters(), cfg.optim))
    if cfg.loss.gan_power > 0:
        disc = UNetPatchDiscriminator(cfg.model.resolved_gan_patch_size, 3, cfg.model.gan_dims)
        discs["gan"] = (disc, build_optimizer(disc.parameters(), cfg.optim))
    for _ in range(2):
        a, b = torch.rand(2, 3, RES, RES), torch.rand(2, 3, RES, RES)
        out = model(a, b)
        _step(opt, sum(v.square().mean() for v in out.values()))
        if "code" in discs:
            disc, d_opt = discs["code"]
            _step(d_opt, disc(out["code_a"].detach()).square().mean())
        if "gan" in discs:
            disc, d_opt = discs["gan"]
            center, full = disc(out["pred_bb"].detach())
            _step(d_opt, center.square().mean() + full.square().mean())
    return model.eval(), opt, discs


@pytest.fixture(scope="module", params=list(CASES))
def round_trip(request, tmp_path_factory: pytest.TempPathFactory):
    archi = request.param
    cfg = make_config(archi)
    model, opt, discs = trained(cfg)
    root = tmp_path_factory.mktemp(archi)
    folder = write_dfl_model(root / "dfl", "rt", model, cfg, ITERATION, optimizer=opt, discriminators=discs)
    result = import_dfl_model(folder, root / "imported.pth")
    return cfg, model, opt, discs, result, load_checkpoint(root / "imported.pth"), root


def test_config_round_trips(round_trip) -> None:
    cfg, *_, result, state, _ = round_trip
    assert result.step == state["step"] == ITERATION
    imported = Config.from_dict(state["config"])
    for section in ("model", "loss", "optim", "data"):
        assert getattr(imported, section) == getattr(cfg, section), section
    assert (imported.train.batch_size, imported.train.pretrain) == (cfg.train.batch_size, cfg.train.pretrain)
    assert result.warnings == [
        "DeepFaceLab options TorchSAE does not have (not carried over): "
        "models_opt_on_gpu=True, autobackup_hour=0, write_preview_history=False"
    ]


def test_weights_and_outputs_are_identical(round_trip) -> None:
    _, model, _, _, _, state, root = round_trip
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    loaded, _, _ = load_model_for_export(root / "imported.pth")
    faces = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ours, theirs in zip(loaded.swap(faces), model.swap(faces), strict=True):
            assert torch.equal(ours, theirs)
        out_a, out_b = loaded(faces, faces.flip(0)), model(faces, faces.flip(0))
        for key in ("pred_aa", "pred_aa_mask", "pred_bb", "pred_bb_mask"):
            assert torch.equal(out_a[key], out_b[key]), key


def _assert_same_moments(imported: dict, optimizer: torch.optim.Optimizer, params: list) -> None:
    """Imported state == the optimizer's own, index by index; never-updated weights have zero slots."""
    own = optimizer.state_dict()["state"]
    names = {"adabelief": ("exp_avg", "exp_avg_var"), "rmsprop": ("square_avg",)}
    kind = "adabelief" if "exp_avg" in next(iter(own.values())) else "rmsprop"
    assert sorted(imported["state"]) == list(range(len(params)))
    for index, param in enumerate(params):
        for name in names[kind]:
            expected = own[index][name] if index in own else torch.zeros_like(param)
            assert torch.equal(imported["state"][index][name], expected), (index, name)
    assert set(imported["state"][0]) == set(names[kind])


def test_optimizer_moments_round_trip(round_trip) -> None:
    cfg, model, opt, discs, result, state, _ = round_trip
    _assert_same_moments(state["optimizers"]["model"], opt, list(model.parameters()))
    assert set(state["discriminators"]) == set(discs) and set(result.optimizers) == {"model", *discs}
    for name, (disc, d_opt) in discs.items():
        for key, value in disc.state_dict().items():
            assert torch.equal(state["discriminators"][name][key], value), (name, key)
        _assert_same_moments(state["optimizers"][name], d_opt, list(disc.parameters()))
    frozen = cfg.model.archi_type == "liae" and not cfg.data.random_warp
    assert frozen == any(k.startswith("inter_ab.") for k in _zero_slots(state, model))


def _zero_slots(state: dict, model: SAEHD) -> list[str]:
    names = [name for name, _ in model.named_parameters()]
    slots = state["optimizers"]["model"]["state"]
    return [names[i] for i, s in slots.items() if all(float(v.abs().max()) == 0 for v in s.values())]


def test_dfm_export_of_the_import_matches_the_original(round_trip) -> None:
    cfg, model, *_, root = round_trip
    loaded, imported_cfg, step = load_model_for_export(root / "imported.pth")
    path = root / "imported.dfm"
    export_onnx(loaded, path, imported_cfg.model, layout="dfm", step=step)
    faces = np.random.default_rng(2).random((3, RES, RES, 3), dtype=np.float32)
    double = DeepFaceLiveDfm(path)  # DeepFaceLive's loader: literal 'in_face:0', outputs by position
    with torch.no_grad():
        ref = model.swap(torch.from_numpy(faces).permute(0, 3, 1, 2))
    for batch in (slice(0, 1), slice(0, 3)):
        face_mask, swapped, swapped_mask = double.convert(faces[batch])
        for name, ours, theirs in zip(
            ("swap", "swap mask", "A mask"), (swapped, swapped_mask, face_mask), ref, strict=True
        ):
            want = theirs[batch].permute(0, 2, 3, 1).numpy()
            np.testing.assert_allclose(ours, want, atol=1e-5, rtol=0, err_msg=name)


def test_unused_or_missing_discriminators_are_noted(tmp_path: Path) -> None:
    cfg = make_config("df-udt")
    model, opt, discs = trained(cfg)
    # options with the powers off: the files are there but DeepFaceLab would not load them either
    options = dfl_options(cfg, true_face_power=np.float64(0.0), gan_power=np.float64(0.0))
    folder = write_dfl_model(
        tmp_path / "off", "m", model, cfg, ITERATION, optimizer=opt, discriminators=discs, options=options
    )
    result = import_dfl_model(folder, tmp_path / "off.pth")
    assert load_checkpoint(tmp_path / "off.pth")["discriminators"] == {}
    assert any("m_SAEHD_code_discriminator.npy: not used" in n for n in result.notes)
    assert any("m_SAEHD_GAN.npy: not used" in n for n in result.notes)
    # powers on, files absent: the trainer starts the discriminators from scratch
    folder = write_dfl_model(tmp_path / "absent", "m", model, cfg, ITERATION, optimizer=opt)
    result = import_dfl_model(folder, tmp_path / "absent.pth")
    state = load_checkpoint(tmp_path / "absent.pth")
    assert state["discriminators"] == {} and set(state["optimizers"]) == {"model"}
    assert any("m_SAEHD_GAN.npy: not found" in n for n in result.notes)
