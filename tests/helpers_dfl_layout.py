"""Test helper: write a TorchSAE model out as a DeepFaceLab SAEHD model folder.

Why by hand and not through the importer's tables: the round-trip tests must catch a mistake in the
importer's names, transposes or src/dst mapping, so this writer spells DeepFaceLab's layout out on its
own (spec §2 and §4, and tests/fixtures/dfl_models/README.md):

* ``<name>_SAEHD_<net>.npy``: a pickle of ``{'<sub/path>/weight:0': ndarray}``, conv kernels
  (kh, kw, in, out), Conv2DTranspose kernels (kh, kw, out, in), dense kernels (in, out);
* ``<name>_SAEHD_src_dst_opt.npy`` (and ``D_code_opt``, ``GAN_opt``): ``iters:0``, then every
  ``ms_<scope>/<sub/path>/weight_0:0``, then every ``vs_...`` (AdaBelief), or every ``acc_...``;
* ``<name>_SAEHD_data.dat``: ``{'iter', 'options', 'loss_history', 'sample_for_preview',
  'choosed_gpu_indexes'}`` with DeepFaceLab's numpy types in the options.

Pickles are written with ``compat_dumps`` (numpy-1.x names, as stock DeepFaceLab reads and writes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchsae.config import Config
from torchsae.dfl.unpickle import compat_dumps

# DeepFaceLab file -> SAEHD attribute. DeepFaceLab's src is B (decoder_src = decoder B), dst is A.
DF_NETS = {"encoder": "encoder", "inter": "inter", "decoder_src": "decoder_b", "decoder_dst": "decoder_a"}
LIAE_NETS = {"encoder": "encoder", "inter_AB": "inter_ab", "inter_B": "inter_b", "decoder": "decoder"}
SLOT_PREFIXES = {"adabelief": {"exp_avg": "ms_", "exp_avg_var": "vs_"}, "rmsprop": {"square_avg": "acc_"}}


def dfl_nets(model: nn.Module) -> dict[str, nn.Module]:
    """DeepFaceLab file name -> TorchSAE module, for the model's archi type."""
    table = DF_NETS if model.archi_type == "df" else LIAE_NETS
    return {net: getattr(model, attr) for net, attr in table.items()}


def tf_name(torch_name: str) -> str:
    """``down1.downs.0.conv1.weight`` -> ``down1/downs_0/conv1/weight:0`` (list items are ``_<i>``)."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"_\1", torch_name).replace(".", "/") + ":0"


def tf_array(tensor: torch.Tensor) -> np.ndarray:
    """A torch weight in TensorFlow layout: 4-D (a, b, kh, kw) -> (kh, kw, b, a); 2-D transposed."""
    array = tensor.detach().cpu().numpy()
    if array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array.astype(np.float32))


def net_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """One network's weight dict as DeepFaceLab pickles it."""
    return {tf_name(name): tf_array(p) for name, p in module.named_parameters()}


def optimizer_dict(
    scoped: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None, kind: str, iters: int
) -> dict[str, Any]:
    """An optimizer file's dict: ``iters:0`` then one block per slot, each over every weight in order.

    Weights the optimizer never updated (LIAE's frozen inter_AB) get zero moments, as DeepFaceLab
    creates slots for every saveable weight.
    """
    out: dict[str, Any] = {"iters:0": np.int64(iters)}
    for state_name, prefix in SLOT_PREFIXES[kind].items():
        for scope, module in scoped.items():
            for name, p in module.named_parameters():
                state = optimizer.state.get(p, {}) if optimizer is not None else {}
                value = state.get(state_name, torch.zeros_like(p))
                out[f"{prefix}{scope}/{tf_name(name).removesuffix(':0')}_0:0"] = tf_array(value)
    return out


def dfl_options(cfg: Config, **changes: Any) -> dict[str, Any]:
    """The options dict DeepFaceLab would store for ``cfg`` (its names, order and numpy types)."""
    m, d, lo, o, t = cfg.model, cfg.data, cfg.loss, cfg.optim, cfg.train
    options = {
        "resolution": np.int64(m.resolution),
        "face_type": m.face_type,
        "models_opt_on_gpu": True,
        "archi": m.archi,
        "ae_dims": np.int64(m.ae_dims),
        "e_dims": np.int64(m.e_dims),
        "d_dims": np.int64(m.d_dims),
        "d_mask_dims": np.int64(m.resolved_d_mask_dims),
        "masked_training": lo.masked_training,
        "eyes_mouth_prio": lo.eyes_mouth_prio,
        "uniform_yaw": d.uniform_yaw,
        "blur_out_mask": lo.blur_out_mask,
        "adabelief": o.optimizer == "adabelief",
        "lr_dropout": "y" if o.lr_dropout else "n",
        "random_warp": d.random_warp,
        "random_hsv_power": np.float64(d.random_hsv_power),
        "true_face_power": np.float64(lo.true_face_power),
        "face_style_power": np.float64(lo.face_style_power),
        "bg_style_power": np.float64(lo.bg_style_power),
        "ct_mode": d.ct_mode,
        "clipgrad": o.clipgrad,
        "pretrain": t.pretrain,
        "autobackup_hour": 0,
        "write_preview_history": False,
        "target_iter": 0,
        "random_src_flip": d.random_flip_b,
        "random_dst_flip": d.random_flip_a,
        "batch_size": t.batch_size,
        "gan_power": np.float64(lo.gan_power),
        "gan_patch_size": np.int64(m.resolved_gan_patch_size),
        "gan_dims": m.gan_dims,
    }
    options.update(changes)
    return options


def write_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(compat_dumps(obj))
    return path


def write_dfl_model(
    folder: Path,
    name: str,
    model: nn.Module,
    cfg: Config,
    iteration: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    discriminators: dict[str, tuple[nn.Module, torch.optim.Optimizer | None]] | None = None,
    options: dict[str, Any] | None = None,
    loss_history: list | None = None,
) -> Path:
    """Write ``model`` (and its optimizer's moments, and discriminators) as DeepFaceLab would.

    ``discriminators`` maps ``'code'`` / ``'gan'`` to (module, optimizer); they are written as
    ``code_discriminator`` (scope ``dis``) and ``GAN`` (scope ``D_src``) with ``D_code_opt`` /
    ``GAN_opt``. Returns the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    kind = cfg.optim.optimizer
    nets = dfl_nets(model)
    for net, module in nets.items():
        write_pickle(folder / f"{name}_SAEHD_{net}.npy", net_weights(module))
    if optimizer is not None:
        write_pickle(
            folder / f"{name}_SAEHD_src_dst_opt.npy", optimizer_dict(nets, optimizer, kind, iteration)
        )
    files = {"code": ("code_discriminator", "D_code_opt", "dis"), "gan": ("GAN", "GAN_opt", "D_src")}
    for key, (module, opt) in (discriminators or {}).items():
        weights_file, opt_file, scope = files[key]
        write_pickle(folder / f"{name}_SAEHD_{weights_file}.npy", net_weights(module))
        if opt is not None:
            write_pickle(
                folder / f"{name}_SAEHD_{opt_file}.npy", optimizer_dict({scope: module}, opt, kind, iteration)
            )
    data = {
        "iter": iteration,
        "options": options if options is not None else dfl_options(cfg),
        "loss_history": loss_history if loss_history is not None else [],
        "sample_for_preview": None,
        "choosed_gpu_indexes": None,
    }
    write_pickle(folder / f"{name}_SAEHD_data.dat", data)
    return folder
