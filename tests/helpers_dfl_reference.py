"""Test helper: compare a TorchSAE model with DeepFaceLab's own outputs of the df-ud fixture.

``tests/fixtures/dfl_models/a_df-ud_r64/reference_io.npz`` holds DeepFaceLab's (TF) swap, masks and
reconstructions of ``in_face``; both the weight-layout test and the ``import-dfl`` test check a model
against every one of them (src = B, dst = A).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DFL_MODEL_DIR = Path(__file__).parent / "fixtures" / "dfl_models" / "a_df-ud_r64"


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).detach().numpy()


def assert_matches_reference_outputs(model: torch.nn.Module, ref, atol: float) -> dict[str, torch.Tensor]:
    """``model``'s swap and reconstructions of ``ref['in_face']`` equal ``ref``'s within ``atol``;
    returns the model's forward outputs for further checks."""
    face = torch.from_numpy(ref["in_face"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        swapped, swapped_mask, face_mask = model.swap(face)
        out = model(face, face)
    pairs = {
        "out_celeb_face": swapped,
        "out_celeb_face_mask": swapped_mask,
        "out_face_mask": face_mask,
        "recon_src": out["pred_bb"],
        "recon_src_mask": out["pred_bb_mask"],
        "recon_dst": out["pred_aa"],
        "recon_dst_mask": out["pred_aa_mask"],
    }
    for name, ours in pairs.items():
        np.testing.assert_allclose(nhwc(ours), ref[name], atol=atol, rtol=0, err_msg=name)
    return out
