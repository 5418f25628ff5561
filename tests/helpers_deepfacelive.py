"""Test double of DeepFaceLive's ``.dfm`` loader, written from spec §6 (not from DeepFaceLive's code).

Every ``.dfm`` test runs its model through this double instead of a bare ONNX Runtime session, so a
test cannot feed a name DeepFaceLive would not feed. What DeepFaceLive's ``DFMModel`` does:

* at load (ONNX Runtime session): ``inputs[0].name`` must contain ``in_face``; H and W come from
  ``inputs[0].shape[1:3]``; a second input must contain ``morph_value``; any other input makes the
  model invalid;
* per frame: the face (BGR; uint8 divided by 255) is resized to H x W, the model is run with the
  inputs fed by the **literal** names ``in_face:0`` (and ``morph_value:0``, default 0.75), and the
  three outputs are **unpacked by position** as (face_mask, celeb_face, celeb_mask), each resized back
  to the input's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import onnxruntime as ort


class DfmLoadError(Exception):
    """The model would not appear in DeepFaceLive's model list (or not load)."""


class DfmOutputs(NamedTuple):
    """The three outputs in the order DeepFaceLive unpacks them, NHWC float32."""

    face_mask: np.ndarray
    celeb_face: np.ndarray
    celeb_mask: np.ndarray


class DeepFaceLiveDfm:
    """Load a ``.dfm`` and convert faces the way DeepFaceLive does."""

    def __init__(self, path: str | Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if not inputs or "in_face" not in inputs[0].name:
            raise DfmLoadError(f"{path}: first input is not *in_face*: {[i.name for i in inputs]}")
        height, width = inputs[0].shape[1:3]
        if not (isinstance(height, int) and isinstance(width, int)):
            raise DfmLoadError(f"{path}: input H, W are not static: {inputs[0].shape}")
        self.height, self.width = height, width
        if len(inputs) == 1:
            self.has_morph_value = False
        elif len(inputs) == 2 and "morph_value" in inputs[1].name:
            self.has_morph_value = True
        else:
            raise DfmLoadError(f"{path}: invalid inputs {[i.name for i in inputs]}")

    def convert(self, faces: np.ndarray, morph_factor: float = 0.75) -> DfmOutputs:
        """``faces``: (N, h, w, 3) or (h, w, 3) BGR, uint8 or float in [0, 1] -> outputs at (h, w)."""
        faces = np.asarray(faces)
        if faces.ndim == 3:
            faces = faces[None]
        if faces.dtype == np.uint8:
            faces = faces.astype(np.float32) / 255.0
        faces = faces.astype(np.float32)
        n, h, w, _ = faces.shape
        resized = np.stack([self._resize(face, self.width, self.height) for face in faces])
        feed = {"in_face:0": np.ascontiguousarray(resized)}
        if self.has_morph_value:
            feed["morph_value:0"] = np.array([morph_factor], dtype=np.float32)
        face_mask, celeb_face, celeb_mask = self.session.run(None, feed)  # by position
        back = [np.stack([self._resize(x, w, h) for x in out]) for out in (face_mask, celeb_face, celeb_mask)]
        for out, channels in zip(back, (1, 3, 1), strict=True):
            assert out.shape == (n, h, w, channels), out.shape
        return DfmOutputs(*back)

    @staticmethod
    def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
        """Resize (H, W, C) to (height, width, C); a no-op at the same size, as in DeepFaceLive."""
        if image.shape[:2] == (height, width):
            return image
        out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return out.reshape(height, width, image.shape[2])
