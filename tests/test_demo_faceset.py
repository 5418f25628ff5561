"""The synthetic demo faceset: DeepFaceLab-format files, landmarks that agree with pixels and masks,
separable identities drawn from one scene distribution, truth pairs and byte-exact determinism.

References: DeepFaceLab's own files in tests/fixtures/dfl (marker layout, stored key types, the mean
face in whole_face framing), DeepFaceLab's landmark hull (torchsae.dfl.masks, itself checked bit for bit
against DeepFaceLab), scipy's two-sample KS test, and geometry written out by hand.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import ks_2samp

from torchsae.cli import main
from torchsae.demo import identity_for, make_demo_faceset, render_face, scene_for
from torchsae.demo.faceset import encode_face
from torchsae.demo.params import Scene
from torchsae.dfl.geometry import face_transform_mat
from torchsae.dfl.jpeg import list_segments, read_app15
from torchsae.dfl.masks import hull_mask
from torchsae.dfl.meta import load_meta
from torchsae.dfl.unpickle import restricted_loads
from torchsae.errors import TorchSAEError

FIXTURES = Path(__file__).parent / "fixtures" / "dfl"
COUNT, TRUTH = 10, 4


def _fixture(name: str) -> dict:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return next(f for f in manifest["files"] if f["file"] == name)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _eye_line_angle(lm: np.ndarray) -> float:
    """Degrees from the right eye's centre (36-41) to the left eye's (42-47); 0 for a level face."""
    d = lm[42:48].mean(0) - lm[36:42].mean(0)
    return float(np.degrees(np.arctan2(d[1], d[0])))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


NEUTRAL = Scene(
    yaw=0.0, pitch=0.0, roll=0.0, mouth_open=0.0, smile=0.0, eye_open=1.0, brow_raise=0.0,
    gaze_x=0.0, gaze_y=0.0, light_azimuth=90.0, light_elevation=70.0, ambient=0.45, diffuse=0.5,
    temperature=0.0, exposure=1.0, scale=1.0, shift_x=0.0, shift_y=0.0, detail_seed=5,
)  # fmt: skip


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "set"
    make_demo_faceset(root, COUNT, seed=11, truth_count=TRUTH)
    return root


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, faceset: Path) -> None:
    make_demo_faceset(tmp_path / "again", COUNT, seed=11, truth_count=TRUTH)
    first, again = _tree(faceset), _tree(tmp_path / "again")
    assert len(first) == 2 * COUNT + 3 * TRUTH + 2  # faces, truth files, truth manifest, stamp
    assert first == again
    # each file depends on (seed, identity, index) only: a smaller faceset is a prefix of a bigger one
    make_demo_faceset(tmp_path / "prefix", 3, seed=11, truth_count=1)
    prefix = {k: v for k, v in _tree(tmp_path / "prefix").items() if not k.endswith(".json")}
    assert len(prefix) == 9 and all(first[k] == v for k, v in prefix.items())
    make_demo_faceset(tmp_path / "other", 2, seed=12, truth_count=1)
    other = _tree(tmp_path / "other")
    for name in ("A/00000.jpg", "B/00001.jpg", "truth/0000_a.jpg", "truth/0000_b.jpg"):
        assert other[name] != first[name]
    assert not np.allclose(
        load_meta(tmp_path / "other/A/00000.jpg").landmarks, load_meta(faceset / "A/00000.jpg").landmarks
    )


def test_workers_do_not_change_bytes(tmp_path: Path) -> None:
    make_demo_faceset(tmp_path / "one", 3, seed=4, truth_count=2, workers=1)
    make_demo_faceset(tmp_path / "two", 3, seed=4, truth_count=2, workers=2)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")


def test_files_are_deepfacelab_whole_face_jpegs(faceset: Path) -> None:
    ref = _fixture("dfl_wf_01_xseg256_binary.jpg")
    for side in ("A", "B"):
        files = sorted((faceset / side).glob("*.jpg"))
        assert [p.name for p in files] == [f"{i:05d}.jpg" for i in range(COUNT)]
        for path in files:
            data = path.read_bytes()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            assert image.shape == (512, 512, 3) and image.dtype == np.uint8
            # DeepFaceLab's layout: APP15 right after JFIF, then the scan's tables, as in its own files
            markers = [f"FF{s.marker:02X}" for s in list_segments(data, str(path))]
            assert markers[: markers.index("FFDA") + 1] == ref["jpeg_markers_before_scan"]
            raw = restricted_loads(read_app15(data, str(path)), str(path))
            assert set(raw) == set(ref["dfl_dict_keys"]) | {"xseg_mask"}
            assert isinstance(raw["landmarks"], list) and len(raw["landmarks"]) == 68
            assert all(isinstance(v, float) for pt in raw["landmarks"] for v in pt)
            meta = load_meta(path)
            assert meta.face_type == "whole_face" and meta.image_hw == (512, 512)
            assert meta.landmarks.shape == (68, 2)
            assert (meta.landmarks > 0).all() and (meta.landmarks < 512).all()
            np.testing.assert_array_equal(meta.source_landmarks, meta.landmarks)
            np.testing.assert_array_equal(meta.image_to_face_mat, [[1, 0, 0], [0, 1, 0]])
            lm = meta.landmarks
            np.testing.assert_array_equal(
                meta.source_rect,
                [
                    np.floor(lm[:, 0].min()),
                    np.floor(lm[:, 1].min()),
                    np.ceil(lm[:, 0].max()),
                    np.ceil(lm[:, 1].max()),
                ],
            )
            assert meta.source_filename == path.stem + ".png"
            mask = meta.xseg_mask()
            assert mask.shape == (256, 256, 1)
            assert set(np.unique(mask)) == {0.0, 1.0}
            assert 0.12 < mask.mean() < 0.5  # a face, not an empty or full frame


def test_landmarks_lie_in_mask_and_match_deepfacelab_hull(faceset: Path) -> None:
    ious = []
    for path in sorted(faceset.glob("[AB]/*.jpg")):
        meta = load_meta(path)
        xseg = meta.xseg_mask()[:, :, 0] > 0.5
        # >= 95% of the 68 points inside the mask dilated by 4 px (8 px of the 512 face)
        dilated = cv2.dilate(xseg.astype(np.uint8), np.ones((9, 9), np.uint8))
        pts = np.clip(np.floor(meta.landmarks / 2).astype(int), 0, 255)
        assert dilated[pts[:, 1], pts[:, 0]].mean() >= 0.95, path
        hull = hull_mask(meta.landmarks, (512, 512))[:, :, 0]
        hull = cv2.resize(hull, (256, 256), interpolation=cv2.INTER_AREA) >= 0.5
        ious.append(_iou(hull, xseg))
    assert min(ious) > 0.7 and np.mean(ious) > 0.8, ious


def test_neutral_face_sits_where_deepfacelab_puts_a_whole_face() -> None:
    """A frontal, neutral face lands on DeepFaceLab's mean face in whole_face framing (fixture 01),
    and every iBUG-68 group sits in its place: same layout, same crop."""
    ref = np.array(_fixture("dfl_wf_01_xseg256_binary.jpg")["landmarks"])
    groups = {"jaw": (0, 17), "brows": (17, 27), "nose": (27, 36), "eyes": (36, 48), "mouth": (48, 68)}
    for name in ("A", "B"):
        lm = render_face(identity_for(name), NEUTRAL).landmarks
        assert np.linalg.norm(lm - ref, axis=1).mean() < 12.0
        for a, b in groups.values():
            assert np.linalg.norm(lm[a:b].mean(0) - ref[a:b].mean(0)) < 20.0
        # orientation of the layout: jaw and eyes run image-left to image-right, chin is the lowest point
        assert (
            np.all(np.diff(lm[0:9, 0]) > 0)
            and np.all(np.diff(lm[36:40, 0]) > 0)
            and lm[8, 1] == lm[:, 1].max()
        )


def test_deepfacelab_alignment_of_our_landmarks_is_near_identity(faceset: Path) -> None:
    """Re-aligning our landmarks as DeepFaceLab's extractor would (Umeyama to its mean face, whole_face
    padding) gives back nearly this very crop: the faces really are in whole_face framing."""
    for side in ("A", "B"):
        for index in range(COUNT):
            lm = load_meta(faceset / side / f"{index:05d}.jpg").landmarks
            mat = face_transform_mat(lm, 512, "whole_face")
            scale = np.sqrt(abs(np.linalg.det(mat[:, :2])))
            centre_shift = np.linalg.norm(mat @ [256.0, 256.0, 1.0] - 256.0)
            angle = np.degrees(np.arctan2(mat[1, 0], mat[0, 0]))
            roll = scene_for(11, 0, side, index).roll
            assert 0.9 < scale < 1.15 and centre_shift < 20.0, (side, index, scale, centre_shift)
            assert abs(angle + roll) < 6.0  # the alignment undoes the drawn roll


def test_pixels_agree_with_landmarks() -> None:
    """Lips are drawn where landmarks 48-59 say, an open mouth is dark inside 60-67, pupils are dark."""
    for name in ("A", "B"):
        ident = identity_for(name)
        face = render_face(ident, dataclasses.replace(NEUTRAL, mouth_open=1.0))
        img, lm = face.image.astype(np.float32), face.landmarks

        inner = np.zeros((512, 512), np.uint8)
        cv2.fillPoly(inner, [np.round(lm[60:68]).astype(np.int32)], 1)
        lips = np.zeros((512, 512), np.uint8)
        cv2.fillPoly(lips, [np.round(lm[48:60]).astype(np.int32)], 1)
        lip = img[(lips > 0) & (inner == 0)].mean(axis=0)
        cheek = (
            img[int(lm[29, 1]) - 6 : int(lm[29, 1]) + 6, int(lm[2, 0]) + 25 : int(lm[2, 0]) + 37]
            .reshape(-1, 3)
            .mean(0)
        )
        assert lip[2] / lip[1] > 1.15 * cheek[2] / cheek[1]  # redder than skin
        inner = cv2.erode(inner, np.ones((5, 5), np.uint8))
        # dark mouth or teeth, clearly unlike skin: either far darker or far less saturated
        mouth = img[inner > 0].mean(axis=0)
        assert mouth.sum() < 0.75 * cheek.sum() or (mouth.max() - mouth.min()) < 0.6 * (
            cheek.max() - cheek.min()
        )
        for k in (36, 42):
            c = np.round(lm[[k, k + 3]].mean(0)).astype(int)
            assert img[c[1] - 1 : c[1] + 2, c[0] - 1 : c[0] + 2].mean() < 0.5 * cheek.mean()


def test_identities_separable_but_scenes_from_one_distribution() -> None:
    feats, rolls, drawn = {}, {}, []
    for name in ("A", "B"):
        f, r = [], []
        for i in range(40):
            scene = scene_for(3, 0, name, i)
            face = render_face(identity_for(name), scene)
            skin = face.image[face.mask > 0].astype(np.float64).mean(0)
            lm = face.landmarks
            eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
            roll = _eye_line_angle(lm)
            if abs(scene.yaw) < 12 and abs(scene.pitch) < 12:  # (yaw with pitch tilts the eye line)
                assert abs(roll - scene.roll) < 2.5  # landmarks carry the drawn pose
            r.append(roll)
            drawn.append(scene.roll)
            # lighting-independent identity cues: skin chromaticity and face length / eye distance
            f.append(
                [skin[0] / skin[2], skin[1] / skin[2], (lm[8, 1] - lm[27, 1]) / np.linalg.norm(eye_r - eye_l)]
            )
        feats[name], rolls[name] = np.array(f), np.array(r)
    assert np.corrcoef(np.r_[rolls["A"], rolls["B"]], drawn)[0, 1] > 0.9
    # same scene distribution: rolls read off the landmarks are indistinguishable between A and B
    assert ks_2samp(rolls["A"], rolls["B"]).pvalue > 0.05
    # different people: a nearest-centroid classifier fitted on half the faces sorts the other half
    train = {k: v[::2] for k, v in feats.items()}
    scale = np.vstack(list(train.values())).std(0)
    cents = {k: v.mean(0) / scale for k, v in train.items()}
    correct = [
        min(cents, key=lambda c: np.linalg.norm(x / scale - cents[c])) == k
        for k, v in feats.items()
        for x in v[1::2]
    ]
    assert np.mean(correct) >= 0.95


def test_truth_pairs_share_scene(faceset: Path) -> None:
    truth = faceset / "truth"
    manifest = json.loads((truth / "manifest.json").read_text())
    assert [it["index"] for it in manifest["items"]] == list(range(TRUTH))
    assert manifest["identities"]["a"]["name"] == "A" and manifest["identities"]["b"]["name"] == "B"
    pair_d, angles = [], []
    for item in manifest["items"]:
        ma, mb = load_meta(truth / item["a"]), load_meta(truth / item["b"])
        assert Scene(**item["scene"]) == scene_for(11, 1, "truth", item["index"])
        pair_d.append(np.linalg.norm(ma.landmarks - mb.landmarks, axis=1).mean())
        angles.append([_eye_line_angle(m.landmarks) for m in (ma, mb)])
        xa, xb = ma.xseg_mask()[:, :, 0] > 0.5, mb.xseg_mask()[:, :, 0] > 0.5
        assert _iou(xa, xb) > 0.7  # same pose; the face shapes differ (B's jaw is narrower, longer)
        mask = cv2.imread(str(truth / item["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
        small = cv2.resize(mask, (256, 256), interpolation=cv2.INTER_AREA) >= 128
        assert _iou(small, xa & xb) > 0.95  # the truth mask is the face in both renders
        ia = cv2.imread(str(truth / item["a"])).astype(np.int16)
        ib = cv2.imread(str(truth / item["b"])).astype(np.int16)
        assert np.abs(ia[-48:, :48] - ib[-48:, :48]).mean() < 3.0  # same background and light
        assert np.abs(ia - ib)[mask > 0].mean() > 8.0  # ...but a different face
        np.testing.assert_array_equal(
            ma.landmarks, render_face(identity_for("A"), Scene(**item["scene"])).landmarks
        )
    # same scene, other person: the landmarks differ by the two people's shape difference (as in a
    # neutral pose) and by nothing the scene adds; the eye line, i.e. roll, is shared exactly
    neutral = np.linalg.norm(
        render_face(identity_for("A"), NEUTRAL).landmarks - render_face(identity_for("B"), NEUTRAL).landmarks,
        axis=1,
    ).mean()
    assert all(0.8 * neutral < d < 1.2 * neutral for d in pair_d), (pair_d, neutral)
    assert max(abs(a - b) for a, b in angles) < 0.05


def test_existing_folder_policy(tmp_path: Path) -> None:
    root = tmp_path / "set"
    first = make_demo_faceset(root, 4, seed=1, truth_count=2)
    assert first.seconds > 0
    assert make_demo_faceset(root, 4, seed=1, truth_count=2).seconds == 0.0  # reused as is
    with pytest.raises(TorchSAEError, match="overwrite"):
        make_demo_faceset(root, 2, seed=1, truth_count=1)
    make_demo_faceset(root, 2, seed=1, truth_count=1, overwrite=True)
    assert sorted(p.name for p in (root / "A").iterdir()) == ["00000.jpg", "00001.jpg"]
    assert sorted(p.name for p in (root / "truth").iterdir()) == [
        "0000_a.jpg",
        "0000_b.jpg",
        "0000_mask.png",
        "manifest.json",
    ]
    (root / "demo_faceset.json").unlink()  # as after an interrupted run: never taken as complete
    with pytest.raises(TorchSAEError, match="incomplete"):
        make_demo_faceset(root, 2, seed=1, truth_count=1)
    with pytest.raises(TorchSAEError, match="truth"):
        make_demo_faceset(tmp_path / "bad", 2, identities=("A", "truth"))
    (root / "B" / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(TorchSAEError, match="holiday.jpg"):
        make_demo_faceset(root, 3, seed=1, overwrite=True)
    assert (root / "B" / "holiday.jpg").read_bytes() == b"mine"


def test_cli_make_and_demo_passthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        main, ["demo", "make", str(out), "--count", "3", "--seed", "2", "--truth-count", "1"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((out / "A").glob("*.jpg"))) == 3 and len(list((out / "B").glob("*.jpg"))) == 3
    assert sorted(p.name for p in (out / "truth").iterdir()) == [
        "0000_a.jpg",
        "0000_b.jpg",
        "0000_mask.png",
        "manifest.json",
    ]
    result = runner.invoke(main, ["demo", "make", str(out), "--count", "4"])
    assert result.exit_code != 0 and "--overwrite" in result.output and "Traceback" not in result.output

    calls = []
    fake = types.ModuleType("torchsae.demo.run")
    fake.run_demo = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "torchsae.demo.run", fake)
    result = runner.invoke(
        main,
        [
            "demo",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "7",
            "--count",
            "9",
            "--seed",
            "3",
            "--resolution",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls == [{"out": tmp_path / "run", "count": 9, "steps": 7, "seed": 3, "resolution": 32}]
    result = runner.invoke(main, ["demo"])  # options left out: the runner's own defaults apply
    assert result.exit_code == 0, result.output
    assert calls[-1] == {"out": Path("demo_run")}


@pytest.mark.slow
def test_render_and_encode_at_least_50_faces_per_second_of_one_core() -> None:
    """CPU time, not wall time, so a busy machine does not fail it: render + JPEG + metadata."""
    ident = identity_for("A")
    scenes = [scene_for(0, 0, "A", i) for i in range(200)]
    encode_face(render_face(ident, scenes[0]), "x.png", "x")  # warm-up (noise tile, imports)
    start = time.process_time()
    for scene in scenes:
        encode_face(render_face(ident, scene), "x.png", "x")
    assert len(scenes) / (time.process_time() - start) >= 50.0
