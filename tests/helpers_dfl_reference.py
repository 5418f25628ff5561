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

# Absolute tolerance for float32 masks in [0, 1] against DeepFaceLab's stored ones (sampleproc_r128).
# Those were computed by OpenCV on one machine, and OpenCV picks its SIMD kernels at run time (SSE4,
# AVX2 + FMA3, AVX-512): FMA and another accumulation order change the last bits (measured: 1 ulp,
# 1.2e-7, in ~1.5 % of the eyes-mouth pixels without AVX2/FMA3). Bound: the eyes-mouth mask is a
# Gaussian blur of ≤ 33 taps (h//16 at 512 px) in two separable passes, then a linear warp (4 taps);
# every output is a convex combination of values in [0, 1], so a pass of n taps rounds by at most
# (n − 1)·2^-24: (32 + 32 + 3)·2^-24 ≈ 4.0e-6 in all. A real error (a landmark off by a pixel, another
# kernel size or interpolation) changes edge pixels by ≥ 1e-2.
MASK_ATOL = 4e-6


def assert_mask_close(got: np.ndarray, ref: np.ndarray, err_msg: str = "") -> None:
    """A float32 mask equals DeepFaceLab's within :data:`MASK_ATOL` (same shape and dtype)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype == np.float32, (got.shape, ref.shape, err_msg)
    np.testing.assert_allclose(got, ref, rtol=0, atol=MASK_ATOL, err_msg=err_msg)


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
