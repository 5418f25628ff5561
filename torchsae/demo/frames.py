"""Synthetic *frames* for the merger: faces placed, scaled and rotated into larger scenes, with truth.

Why: ``torchsae merge`` pastes swapped faces back into their source frames through each aligned
face's ``image_to_face_mat``. To measure that end to end, the demo renders the same scenes twice:

    frames/00001.png ...          identity A placed in a scene (what DeepFaceLab's data_dst holds)
    frames_aligned/00001_0.jpg    each face cut out of its frame as DeepFaceLab's extractor would:
                                  a 512x512 whole_face crop (cubic warp of the frame) whose APP15 dict
                                  records source_filename, image_to_face_mat (frame -> crop),
                                  source_landmarks/source_rect (frame pixels) and the XSeg mask
    frames_truth/00001.png        the same scene with identity B: the ideal merge of frames/00000.png
    frames_truth/00001_mask.png   frame pixels that are face in both renders (0/255)
    frames_truth/manifest.json    per frame: its faces, their placement matrices (crop -> frame)

Frames are numbered from 1, as DeepFaceLab's ``extract video`` names them. Frame ``i`` (0-based
index) holds no face when ``i % 6 == 5`` (the merger must copy it unchanged), two faces when
``i % 6 == 2`` and one otherwise. Each face's crop is composited into a shared backdrop through a soft
ellipse around the head, so the scene outside the heads is identical in the A and B frames.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np

from torchsae.demo.geometry import CROP
from torchsae.demo.params import identity_for, sample_scene
from torchsae.demo.render import RenderedFace, _background, render_face
from torchsae.dfl.geometry import invert_affine
from torchsae.errors import TorchSAEError
from torchsae.fileio import atomic_write_bytes, atomic_write_text

FRAME_SIZE = (480, 320)  # (width, height)
_FRAMES_KIND = 2


def faces_in_frame(index: int) -> int:
    """How many faces frame ``index`` holds (0, 1 or 2)."""
    return 0 if index % 6 == 5 else 2 if index % 6 == 2 else 1


def placement(rng: np.random.Generator, slot: int, slots: int) -> np.ndarray:
    """The (2, 3) similarity taking crop pixels into the frame: scale, rotation, position of one face."""
    width, height = FRAME_SIZE
    scale = rng.uniform(0.42, 0.55) if slots == 1 else rng.uniform(0.3, 0.36)
    angle = np.radians(rng.uniform(-20.0, 20.0))
    cx = width * ((slot + 0.5) / slots) + rng.uniform(-20, 20)
    cy = height * 0.5 + rng.uniform(-15, 15)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    half = CROP / 2
    return np.array([[c, -s, cx - (c * half - s * half)], [s, c, cy - (s * half + c * half)]])


def _head_alpha() -> np.ndarray:
    """Soft ellipse around head, hair and ears in crop pixels: where a face crop covers the scene."""
    alpha = np.zeros((CROP, CROP), np.float32)
    cv2.ellipse(
        alpha, (CROP // 2, int(CROP * 0.52)), (int(CROP * 0.40), int(CROP * 0.46)), 0, 0, 360, 1.0, -1
    )
    return cv2.GaussianBlur(alpha, (0, 0), 8.0)


def _composite(scene: np.ndarray, face: np.ndarray, place: np.ndarray, alpha: np.ndarray) -> None:
    size = (scene.shape[1], scene.shape[0])
    warped = cv2.warpAffine(face, place, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, place, size, flags=cv2.INTER_LINEAR)[:, :, None]
    scene[...] = np.clip(scene * (1.0 - a) + warped.astype(np.float32) * a, 0, 255)


def frame_item(job: tuple[Path, int, tuple[str, str], int]) -> dict:
    """Render, composite and write frame ``index`` (A and B), its aligned faces and its truth mask."""
    from torchsae.demo.faceset import encode_face  # here: faceset imports this module

    root, seed, (name_a, name_b), index = job
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _FRAMES_KIND, int(index)])
    width, height = FRAME_SIZE
    backdrop = cv2.resize(_background(rng), (width, height), interpolation=cv2.INTER_LINEAR).astype(
        np.float32
    )
    frames = {"a": backdrop.copy(), "b": backdrop.copy()}
    truth_mask = np.zeros((height, width), np.uint8)
    alpha = _head_alpha()
    slots = faces_in_frame(index)
    faces, renders = [], []
    for slot in range(slots):
        key = [int(seed) & 0xFFFFFFFF, _FRAMES_KIND, zlib.crc32(b"frames"), int(index), slot]
        scene = sample_scene(np.random.default_rng(key))
        place = placement(rng, slot, slots)
        face_a = render_face(identity_for(name_a), scene)
        face_b = render_face(identity_for(name_b), scene)
        _composite(frames["a"], face_a.image, place, alpha)
        _composite(frames["b"], face_b.image, place, alpha)
        both = ((face_a.mask & face_b.mask) * 255).astype(np.uint8)
        warped = cv2.warpAffine(both, place, (width, height), flags=cv2.INTER_LINEAR)
        np.maximum(truth_mask, np.where(warped >= 128, 255, 0).astype(np.uint8), out=truth_mask)
        renders.append((face_a, place))
        faces.append(
            {"aligned": f"{index + 1:05d}_{slot}.jpg", "placement": place.tolist(), "scene": scene.to_dict()}
        )
    frame_name = f"{index + 1:05d}.png"
    frame_a = np.round(frames["a"]).astype(np.uint8)
    for folder, image in (("frames", frame_a), ("frames_truth", np.round(frames["b"]).astype(np.uint8))):
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise TorchSAEError(f"{root / folder / frame_name}: OpenCV could not encode the PNG")
        atomic_write_bytes(root / folder / frame_name, png.tobytes())
    ok, png = cv2.imencode(".png", truth_mask)
    atomic_write_bytes(root / "frames_truth" / f"{index + 1:05d}_mask.png", png.tobytes())
    for (face_a, place), info in zip(renders, faces, strict=True):
        to_face = invert_affine(place)  # DeepFaceLab's image_to_face_mat: frame -> crop
        crop = cv2.warpAffine(frame_a, to_face, (CROP, CROP), flags=cv2.INTER_CUBIC)
        cut = RenderedFace(image=crop, landmarks=face_a.landmarks, mask=face_a.mask)
        path = root / "frames_aligned" / info["aligned"]
        atomic_write_bytes(path, encode_face(cut, frame_name, str(path), image_to_face_mat=to_face))
    return {"index": index, "frame": frame_name, "mask": f"{index + 1:05d}_mask.png", "faces": faces}


def write_manifest(root: Path, seed: int, names: tuple[str, str], items: list[dict]) -> None:
    manifest = {
        "format": "torchsae-demo-frames",
        "version": 1,
        "seed": int(seed),
        "frame_size": list(FRAME_SIZE),
        "identities": {"a": names[0], "b": names[1]},
        "about": "frames/ holds identity a; frames_truth/ the same scenes with identity b (the ideal "
        "merge); mask = frame pixels that are face in both; placement = crop -> frame affine.",
        "items": items,
    }
    atomic_write_text(root / "frames_truth" / "manifest.json", json.dumps(manifest, indent=1))
