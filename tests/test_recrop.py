"""Re-cropping faces of another face type than the model's (spec §5, "Crop"): the side index stores
re-cropped masks and the re-crop matrix, the DataLoader warps the image with it, files of the model's
own type keep the resize-only fast path, and indexes for different model face types coexist."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines import make_loader
from pipelines.decode import decode_bgr
from pipelines.index import SideIndexError, build_index, index_dir, load_index
from pipelines.torch_loader import TorchLoader
from torchsae.dfl.geometry import recrop_mat, transform_points
from torchsae.dfl.meta import load_meta

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
WF = "dfl_wf_01_xseg256_binary.jpg"  # whole_face, 512², binary XSeg mask stored at 256²
F = "dfl_f_08_fullface_noxseg.jpg"  # full_face, no XSeg mask
R = 64


@pytest.fixture()
def faceset(tmp_path: Path) -> Path:
    for name in (WF, F):
        shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path


def _build(folder: Path, policy: str = "xseg", face_type: str | None = None):
    return build_index(folder, R, policy, workers=1, progress=False, face_type=face_type).index


def _by_name(batch: dict, index) -> dict[str, np.ndarray]:
    """A loader batch as (R, R, 3) BGR images keyed by file name."""
    images = batch["images"].permute(0, 2, 3, 1).numpy()
    return {index.files[int(i)]: images[slot] for slot, i in enumerate(batch["indices"])}


def _images(index) -> dict[str, np.ndarray]:
    """Every file of ``index`` through the DataLoader backend, by file name."""
    loader = TorchLoader(index.paths, R, len(index), workers=0, shuffle=False, recrop=index.recrop)
    batch = next(loader)
    loader.close()
    return _by_name(batch, index)


def _reference_mat(path: Path, face_type: str) -> np.ndarray:
    meta = load_meta(str(path))
    return recrop_mat(meta.landmarks, meta.resolved_face_type, R, face_type)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_whole_face_file_is_recropped_for_a_full_face_model(faceset: Path) -> None:
    index = _build(faceset, face_type="f")
    row = index.files.index(WF)
    mat = _reference_mat(faceset / WF, "f")
    np.testing.assert_allclose(index.recrop[row], mat, atol=1e-4)
    # DeepFaceLab's image path: full-size decode, cubic warp with a replicated border
    full = cv2.imread(str(faceset / WF), cv2.IMREAD_COLOR)
    reference = cv2.warpAffine(full, mat, (R, R), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    ours = _images(index)[WF]
    assert np.abs(ours.astype(np.int16) - reference).max() <= 1
    # and it really is another crop: far from the plain resize of the stored whole-face crop
    assert np.abs(ours.astype(np.int16) - decode_bgr((faceset / WF).read_bytes(), R)).mean() > 10


def test_recropped_xseg_mask_matches_a_warp_of_the_stored_mask(faceset: Path) -> None:
    """Masks: the stored XSeg mask cubic-resized to the face size and clipped, then warped linearly
    with a zero border (spec §5), written independently of torchsae.dfl.masks."""
    index = _build(faceset, face_type="f")
    stored = np.load(FIXTURES / WF.replace(".jpg", ".mask.npy"))[..., 0]
    size = cv2.imread(str(faceset / WF)).shape[0]
    at_face = np.clip(cv2.resize(stored, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)
    mat = _reference_mat(faceset / WF, "f")
    warped = cv2.warpAffine(at_face, mat, (R, R), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    expected = np.rint(warped * 255).astype(np.int16)
    assert np.abs(index.masks[index.files.index(WF), 0].astype(np.int16) - expected).max() <= 1


def test_recropped_mask_lines_up_with_the_recropped_landmarks(faceset: Path) -> None:
    recropped = _build(faceset, "hull", face_type="f")
    as_stored = _build(faceset, "hull")
    mat = _reference_mat(faceset / WF, "f")
    points = transform_points(load_meta(str(faceset / WF)).landmarks, mat)
    hull = np.zeros((R, R), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    row = recropped.files.index(WF)
    assert _iou(recropped.masks[row, 0] > 127, hull > 0) > 0.9
    assert _iou(as_stored.masks[row, 0] > 127, hull > 0) < 0.7  # the un-cropped mask does not line up


def test_files_of_the_model_face_type_are_unchanged(faceset: Path) -> None:
    plain = _build(faceset)
    for face_type, same in (("f", F), ("wf", WF)):
        index = _build(faceset, face_type=face_type)
        row = index.files.index(same)
        assert np.isnan(index.recrop[row]).all()
        np.testing.assert_array_equal(index.masks[row], plain.masks[row])
        image = _images(index)[same]
        np.testing.assert_array_equal(image, decode_bgr((faceset / same).read_bytes(), R))
        other = WF if same == F else F  # the other file is of another type: it is re-cropped
        assert np.isfinite(index.recrop[index.files.index(other)]).all()


def test_indexes_for_different_face_types_coexist(faceset: Path) -> None:
    full = _build(faceset, face_type="f")
    whole = _build(faceset, face_type="whole_face")  # long names map to the same family as "wf"
    assert full.directory.parent == index_dir(faceset, R, "xseg", "f")
    assert whole.directory.parent == index_dir(faceset, R, "xseg", "wf") != full.directory.parent
    again_f, again_wf = load_index(faceset, R, "xseg", "f"), load_index(faceset, R, "xseg", "wf")
    row = full.files.index(WF)
    np.testing.assert_array_equal(again_f.masks[row], full.masks[row])
    np.testing.assert_array_equal(again_wf.masks[row], whole.masks[row])
    assert not np.array_equal(again_f.masks[row], again_wf.masks[row])
    report = build_index(faceset, R, "xseg", workers=1, progress=False, face_type="f")
    assert report.processed == 0 and report.reused == 2  # the other family did not invalidate it


def test_dali_falls_back_to_the_dataloader_when_files_need_recropping(faceset: Path) -> None:
    index = _build(faceset, face_type="f")
    assert index.needs_recrop
    with pytest.warns(UserWarning, match="re-cropped by the DataLoader"):
        loader = make_loader("dali", index, 2, workers=0)
    assert isinstance(loader, TorchLoader)
    loaded: dict[str, np.ndarray] = {}
    for _ in range(2):  # two batches of 2 cover both files of the shuffled stream at least once
        loaded |= _by_name(next(loader), index)
    loader.close()
    np.testing.assert_array_equal(loaded[WF], _images(index)[WF])


def test_uniform_yaw_loader_recrops_too(faceset: Path) -> None:
    index = _build(faceset, face_type="f")
    loader = make_loader("torch", index, 2, workers=0, uniform_yaw=True)
    loaded: dict[str, np.ndarray] = {}
    for _ in range(8):  # yaw-uniform draws with replacement: a few batches see both files
        loaded |= _by_name(next(loader), index)
    loader.close()
    np.testing.assert_array_equal(loaded[WF], _images(index)[WF])


def test_unknown_face_type_is_refused(faceset: Path) -> None:
    with pytest.raises(SideIndexError, match="face type 'quarter'"):
        _build(faceset, face_type="quarter")


def test_recrop_to_head_is_skipped_with_a_reason(faceset: Path) -> None:
    index = _build(faceset, face_type="head")
    assert len(index) == 0
    assert all("head" in s["reason"] for s in index.skipped)


def test_index_command_builds_the_index_training_uses(faceset: Path) -> None:
    """`torchsae index --face-type f` pre-builds the very index a `--face-type f` model loads (no rebuild)."""
    from click.testing import CliRunner

    from torchsae.cli import main

    result = CliRunner().invoke(main, ["index", str(faceset), "-r", "64", "--face-type", "f", "-q"])
    assert result.exit_code == 0, result.output
    assert index_dir(faceset, 64, "xseg", face_type="f").is_dir()
    report = build_index(faceset, 64, "xseg", workers=1, progress=False, face_type="f")
    assert report.processed == 0 and report.index.needs_recrop
