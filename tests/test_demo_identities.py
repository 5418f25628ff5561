"""More than two demo identities: distinct people, truth for every ordered pair (the same held-out
scene rendered as each identity), a pair scorer with a no-swap floor, and byte-exact determinism."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from torchsae.cli import main
from torchsae.demo import identity_for, make_demo_faceset, render_face, scene_for
from torchsae.demo.faceset import identity_names
from torchsae.demo.params import Scene
from torchsae.demo.score import (
    load_pair_truth,
    load_truth,
    no_swap_pair_score,
    pair_swap_score,
    truth_pairs,
)
from torchsae.dfl.meta import load_meta
from torchsae.errors import TorchSAEError

COUNT, TRUTH, N = 2, 2, 4


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ids") / "set"
    made = make_demo_faceset(root, COUNT, seed=5, truth_count=TRUTH, identities=N)
    assert made.identities == ("A", "B", "C", "D")
    return root


def test_names() -> None:
    assert identity_names(2) == ("A", "B")
    assert identity_names(28)[25:] == ("Z", "id_26", "id_27")
    with pytest.raises(TorchSAEError, match="at least two"):
        identity_names(1)


def test_identities_distinct() -> None:
    people = [identity_for(name) for name in identity_names(6)]
    traits = [
        {k: v for k, v in dataclass_dict.items() if k != "name"}
        for dataclass_dict in (p.to_dict() for p in people)
    ]
    assert all(traits[i] != traits[j] for i in range(6) for j in range(i + 1, 6))
    scene = scene_for(0, 1, "truth", 0)
    masks = [render_face(p, scene).mask.astype(bool) for p in people]
    images = [render_face(p, scene).image.astype(np.int16) for p in people]
    for i in range(6):
        for j in range(i + 1, 6):
            both = masks[i] & masks[j]
            assert np.abs(images[i] - images[j])[both].mean() > 5.0, (i, j)


def test_every_ordered_pair_has_truth_of_one_scene(four: Path) -> None:
    names = identity_names(N)
    assert truth_pairs(four) == [(x, y) for x in names for y in names if x != y]
    for name in names:
        assert len(list((four / name).glob("*.jpg"))) == COUNT
    manifest = json.loads((four / "truth_ids" / "manifest.json").read_text())
    assert sorted(manifest["pairs"]) == sorted(f"{x}_to_{y}" for x, y in truth_pairs(four))
    ids = four / "truth_ids"
    for item in manifest["items"]:
        scene = Scene(**item["scene"])
        assert scene == scene_for(5, 1, "truth", item["index"])
        metas = {n: load_meta(ids / n / item["image"]) for n in names}
        for n in names:  # the same scene rendered as each identity: landmarks of that person in that scene
            np.testing.assert_array_equal(metas[n].landmarks, render_face(identity_for(n), scene).landmarks)
            mask = cv2.imread(str(ids / n / item["mask"]), cv2.IMREAD_UNCHANGED)
            assert set(np.unique(mask)) <= {0, 255}
        images = {n: cv2.imread(str(ids / n / item["image"])).astype(np.int16) for n in names}
        for x in names:
            for y in names:
                if x != y:  # same background and light in the corner, a different face inside
                    assert np.abs(images[x][-48:, :48] - images[y][-48:, :48]).mean() < 3.0
    # the A and B renders are the very files of the A->B truth pairs
    for item in manifest["items"]:
        i = item["index"]
        assert (ids / "A" / f"{i:04d}.jpg").read_bytes() == (four / "truth" / f"{i:04d}_a.jpg").read_bytes()
        assert (ids / "B" / f"{i:04d}.jpg").read_bytes() == (four / "truth" / f"{i:04d}_b.jpg").read_bytes()


def test_pair_truth_and_scores(four: Path) -> None:
    res = 32
    faces_a, faces_b, masks = load_truth(four / "truth", res)
    xa, ya, ma = load_pair_truth(four, "A", "B", res)
    assert torch.equal(xa, faces_a) and torch.equal(ya, faces_b) and torch.equal(ma, masks)
    xc, yd, mcd = load_pair_truth(four, "C", "D", res)
    xd, yc, mdc = load_pair_truth(four, "D", "C", res)
    assert torch.equal(xc, yc) and torch.equal(xd, yd) and torch.equal(mcd, mdc)
    assert xc.shape == (TRUTH, 3, res, res) and mcd.shape == (TRUTH, 1, res, res)
    floor = no_swap_pair_score(four, "C", "D", res)
    assert pair_swap_score(lambda x: x, four, "C", "D", res) == floor
    perfect = pair_swap_score(lambda x: yd[: len(x)] if len(x) == TRUTH else x, four, "C", "D", res)
    assert perfect.ssim > 0.999 and perfect.psnr > floor.psnr + 10
    with pytest.raises(TorchSAEError, match="no identity 'E'"):
        load_pair_truth(four, "A", "E", res)


def test_two_identity_folder_scores_both_directions(tmp_path: Path) -> None:
    root = tmp_path / "two"
    make_demo_faceset(root, 1, seed=2, truth_count=1)
    assert not (root / "truth_ids").exists()
    assert truth_pairs(root) == [("A", "B"), ("B", "A")]
    xa, yb, _ = load_pair_truth(root, "A", "B", 16)
    xb, ya, _ = load_pair_truth(root, "B", "A", 16)
    assert torch.equal(xa, ya) and torch.equal(xb, yb)


def test_deterministic_per_seed_and_cli(tmp_path: Path, four: Path) -> None:
    again = tmp_path / "again"
    result = CliRunner().invoke(
        main,
        ["demo", "make", str(again), "--count", str(COUNT), "--seed", "5", "--truth-count", str(TRUTH),
         "--identities", str(N), "--workers", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "truth_ids" in result.output
    assert _tree(again) == _tree(four)
    other = tmp_path / "other"
    make_demo_faceset(other, COUNT, seed=6, truth_count=TRUTH, identities=N)
    assert (other / "truth_ids" / "C" / "0000.jpg").read_bytes() != (
        four / "truth_ids" / "C" / "0000.jpg"
    ).read_bytes()
    # back to two identities with overwrite: C, D and truth_ids go, nothing foreign is left behind
    make_demo_faceset(other, COUNT, seed=6, truth_count=TRUTH, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["A", "B", "demo_faceset.json", "truth"]
    with pytest.raises(TorchSAEError, match="two or more"):
        make_demo_faceset(tmp_path / "bad", 1, identities=("A", "A"))
