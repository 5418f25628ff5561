"""TorchSAE's df-ud against a real DeepFaceLab model: names, shapes and outputs (fixtures/dfl_models).

The fixture was written by DeepFaceLab's own code (df-ud, res 64, ae 32, e 16, d 16, d_mask 16). If
our networks load its weights by renaming keys and transposing kernels only, and then reproduce
DeepFaceLab's outputs, the architecture (layer order, padding, DCR depth-to-space, C,H,W flatten,
the u pixel norm, d's 4-way output) is faithful.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from helpers_dfl_reference import DFL_MODEL_DIR, assert_matches_reference_outputs, nhwc

from torchsae.config import ModelConfig
from torchsae.dfl.unpickle import restricted_loads
from torchsae.models import SAEHD
from torchsae.models.tf_layout import (
    WeightLayoutError,
    state_dict_to_tf,
    tf_key_to_torch,
    tf_to_state_dict,
    torch_key_to_tf,
)

MODEL_DIR = DFL_MODEL_DIR
# DeepFaceLab net file -> SAEHD submodule (decoder_src is B's decoder, decoder_dst A's)
NETS = {"encoder": "encoder", "inter": "inter", "decoder_src": "decoder_b", "decoder_dst": "decoder_a"}


def _model() -> SAEHD:
    cfg = ModelConfig(archi="df-ud", resolution=64, ae_dims=32, e_dims=16, d_dims=16, d_mask_dims=16)
    return SAEHD(cfg).eval()


def _torch_layout_shape(tf_shape: list[int]) -> tuple[int, ...]:
    """Conv (kh, kw, in, out) -> (out, in, kh, kw); dense (in, out) -> (out, in); bias unchanged."""
    if len(tf_shape) == 4:
        kh, kw, cin, cout = tf_shape
        return (cout, cin, kh, kw)
    if len(tf_shape) == 2:
        return (tf_shape[1], tf_shape[0])
    return tuple(tf_shape)


def test_key_conversion_examples() -> None:
    assert tf_key_to_torch("down1/downs_0/conv1/weight:0") == "down1.downs.0.conv1.weight"
    assert tf_key_to_torch("out_conv1/bias:0") == "out_conv1.bias"
    assert tf_key_to_torch("upscalem3/conv1/weight:0") == "upscalem3.conv1.weight"
    assert torch_key_to_tf("down1.downs.3.conv1.bias") == "down1/downs_3/conv1/bias:0"
    assert torch_key_to_tf("upconvs.0.weight") == "upconvs_0/weight:0"


def test_names_and_shapes_cover_weights_index_one_to_one() -> None:
    index = json.loads((MODEL_DIR / "weights_index.json").read_text())
    model = _model()
    assert {f"new_SAEHD_{net}.npy" for net in NETS} <= set(index)  # plus the optimizer file
    for net, attr in NETS.items():
        entries = index[f"new_SAEHD_{net}.npy"]
        ours = {k: tuple(v.shape) for k, v in getattr(model, attr).state_dict().items()}
        theirs = {tf_key_to_torch(key): _torch_layout_shape(shape) for key, shape, _ in entries}
        assert ours == theirs, net
        assert [torch_key_to_tf(k) for k in ours] == [key for key, _, _ in entries], f"{net}: order"


def _load_dfl_weights(model: SAEHD) -> None:
    for net, attr in NETS.items():
        path = MODEL_DIR / f"new_SAEHD_{net}.npy.gz"
        weights = restricted_loads(gzip.decompress(path.read_bytes()), str(path))
        module = getattr(model, attr)
        module.load_state_dict(tf_to_state_dict(weights, module, str(path)))


def test_outputs_match_deepfacelab() -> None:
    """Swap, masks and reconstructions equal DeepFaceLab's own (TF) outputs within 1e-5."""
    ref = np.load(MODEL_DIR / "reference_io.npz")
    model = _model()
    _load_dfl_weights(model)
    out = assert_matches_reference_outputs(model, ref, 1e-5)
    np.testing.assert_allclose(nhwc(out["swap_ab"]), ref["out_celeb_face"], atol=1e-5, rtol=0)
    # the reference is not trivially reproduced: the swap differs from the dst reconstruction
    assert np.abs(ref["out_celeb_face"] - ref["recon_dst"]).max() > 0.05


def test_round_trip_to_tf_layout() -> None:
    path = MODEL_DIR / "new_SAEHD_inter.npy.gz"
    weights = restricted_loads(gzip.decompress(path.read_bytes()), str(path))
    model = _model()
    model.inter.load_state_dict(tf_to_state_dict(weights, model.inter, str(path)))
    back = state_dict_to_tf(model.inter)
    assert list(back) == list(weights)
    for key, value in weights.items():
        np.testing.assert_array_equal(back[key], value)


def test_mismatched_weights_are_reported() -> None:
    path = MODEL_DIR / "new_SAEHD_inter.npy.gz"
    weights = restricted_loads(gzip.decompress(path.read_bytes()), str(path))
    wider = SAEHD(ModelConfig(archi="df-ud", resolution=64, ae_dims=48, e_dims=16, d_dims=16, d_mask_dims=16))
    with pytest.raises(
        WeightLayoutError, match=r"new_SAEHD_inter.*dense1/weight:0.*\(2048, 32\).*\(2048, 48\)"
    ):
        tf_to_state_dict(weights, wider.inter, "new_SAEHD_inter.npy")
    partial = {k: v for k, v in weights.items() if not k.startswith("upscale1")}
    with pytest.raises(WeightLayoutError, match="missing weight.*upscale1/conv1"):
        tf_to_state_dict(partial, _model().inter, "new_SAEHD_inter.npy")
    with pytest.raises(WeightLayoutError, match="'dense1/bias:0' is not a float array"):
        tf_to_state_dict({**weights, "dense1/bias:0": np.array(["x"])}, _model().inter, "x")
    with pytest.raises(WeightLayoutError, match="unexpected weight 'dense3/weight:0'"):
        tf_to_state_dict({**weights, "dense3/weight:0": np.zeros((2, 2), np.float32)}, _model().inter, "x")


def test_unet_discriminator_keys_mirror_deepfacelab_names() -> None:
    """DeepFaceLab names the discriminator lists convs_i / upconvs_i; transposed kernels round-trip."""
    from torchsae.models import UNetPatchDiscriminator

    disc = UNetPatchDiscriminator(16, 3, 4)
    tf = state_dict_to_tf(disc)
    assert {"in_conv/weight:0", "convs_2/bias:0", "upconvs_0/weight:0", "center_out/weight:0"} <= set(tf)
    # Conv2DTranspose kernels are (kh, kw, out, in) in TF: upconvs_0 (the deepest) maps 32 -> 16
    assert tf["upconvs_0/weight:0"].shape == (3, 3, 16, 32)
    again = tf_to_state_dict(tf, disc, "disc")
    for key, value in disc.state_dict().items():
        assert torch.equal(again[key], value)
