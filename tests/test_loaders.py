"""The DataLoader and DALI backends: pixels against reference decoders, sharding, exact resume,
bad files at decode time, and the backend switch."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
import torch
from test_loaders_support import make_faceset, psnr

import pipelines
import pipelines.dali_loader as dali_mod
from pipelines import make_loader, resolve_backend
from pipelines.decode import decode_bgr
from pipelines.index import build_index
from pipelines.torch_loader import ShardedStream, TorchLoader
from torchsae.errors import TorchSAEError

needs_dali = pytest.mark.skipif(not dali_mod.dali_available(), reason="NVIDIA DALI is not installed")

# DCT-scaled decoding (libjpeg-turbo M/8 IDCT) against DeepFaceLab's path (full decode, then
# cv2.INTER_CUBIC to R), measured on the DFL fixture faces at 512²: 39.0 dB min at 128, 47.6 dB at 256.
PSNR_BOUND_DB = {128: 36.0, 256: 44.0}


@pytest.fixture(scope="module")
def faces512(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_faceset(tmp_path_factory.mktemp("faces512"), 8, size=512)


@pytest.fixture(scope="module")
def faceset(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("faceset")
    make_faceset(folder, 11, size=128)
    return build_index(folder, 64, "xseg", workers=1, progress=False).index


def _cubic_reference(path: Path, resolution: int) -> np.ndarray:
    """DeepFaceLab's image path: full-size decode (OpenCV), cubic resize to R."""
    full = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.resize(full, (resolution, resolution), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("resolution", [128, 256])
def test_dct_scaled_decode_is_close_to_decode_then_resize(faces512: list[Path], resolution: int) -> None:
    for path in faces512:
        ours = decode_bgr(path.read_bytes(), resolution)
        assert ours.shape == (resolution, resolution, 3) and ours.dtype == np.uint8
        assert psnr(ours, _cubic_reference(path, resolution)) >= PSNR_BOUND_DB[resolution]


def test_decode_resizes_when_no_dct_scale_fits(faces512: list[Path]) -> None:
    data = faces512[0].read_bytes()
    # 512 * 3/8 = 192 is the smallest scale >= 160; the rest is a cubic resize 192 -> 160
    scaled = simplejpeg.decode_jpeg(data, colorspace="BGR", min_height=160, min_width=160)
    assert scaled.shape[:2] == (192, 192)
    expected = cv2.resize(scaled, (160, 160), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(decode_bgr(data, 160), expected)
    out = np.zeros((160, 160, 3), np.uint8)
    assert decode_bgr(data, 160, out) is out and np.array_equal(out, expected)


def test_torch_loader_batches_are_the_files_at_their_indices(faceset) -> None:
    loader = TorchLoader(faceset.paths, 64, batch_size=4, workers=0, seed=3)
    for _ in range(4):
        batch = next(loader)
        images, indices = batch["images"], batch["indices"]
        assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8 and images.is_contiguous()
        assert indices.dtype == torch.int64 and batch["failed"] == 0
        for image, index in zip(images, indices.tolist(), strict=True):
            reference = cv2.imread(faceset.paths[index], cv2.IMREAD_COLOR)
            reference = cv2.resize(reference, (64, 64), interpolation=cv2.INTER_AREA)  # 128 -> 64 = DCT 1/2
            assert psnr(image.permute(1, 2, 0).numpy(), reference) > 35.0


def test_sharded_stream_has_distributed_sampler_semantics() -> None:
    for n, world in ((12, 2), (11, 2), (10, 3)):
        streams = [ShardedStream(n, rank, world, seed=5) for rank in range(world)]
        for epoch in range(3):
            shards = [s.epoch_indices(epoch) for s in streams]
            assert all(len(s) == -(-n // world) for s in shards)
            joined = np.concatenate(shards)
            assert set(joined.tolist()) == set(range(n))  # together they cover the set
            assert len(joined) - len(set(joined.tolist())) == len(joined) - n  # overlap = padding only
            # rank r takes r::world of one permutation drawn from seed + epoch (DistributedSampler)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
            padded = (perm * 2)[: len(joined)]
            for rank, shard in enumerate(shards):
                assert shard.tolist() == padded[rank::world]
        assert not np.array_equal(streams[0].epoch_indices(0), streams[0].epoch_indices(1))


def test_two_torch_loader_ranks_get_disjoint_shards(faceset) -> None:
    n = len(faceset)
    seen = []
    for rank in range(2):
        loader = TorchLoader(faceset.paths, 64, batch_size=3, rank=rank, world_size=2, workers=0, seed=9)
        per_rank = -(-n // 2)
        stream = [i for _ in range(2) for i in next(loader)["indices"].tolist()][:per_rank]
        seen.append(stream)
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    assert len(set(seen[0]) & set(seen[1])) <= 1  # one padding repeat for 11 files on 2 ranks


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_loader_resumes_exactly(faceset, workers: int) -> None:
    loader = TorchLoader(faceset.paths, 64, batch_size=4, workers=workers, seed=1)
    for _ in range(4):  # crosses the 11-sample epoch boundary
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(3)]
    loader.close()
    resumed = TorchLoader(faceset.paths, 64, batch_size=4, workers=workers, seed=1)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert torch.equal(got["indices"], want["indices"]) and torch.equal(got["images"], want["images"])
    assert state["epoch"] == 1 and state["position"] == 16 - 11


def test_unreadable_file_at_decode_time_is_replaced_and_counted(tmp_path: Path) -> None:
    paths = make_faceset(tmp_path, 4)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])  # truncated after indexing
    loader = TorchLoader([str(p) for p in paths], 64, batch_size=4, workers=0, shuffle=False)
    batch = next(loader)
    assert batch["indices"].tolist() == [0, 2, 2, 3]  # the next file in index order stands in
    assert batch["failed"] == 1 and loader.failed == 1
    assert torch.equal(batch["images"][1], batch["images"][2])


@needs_dali
def test_dali_cpu_decodes_the_same_pixels_at_full_scale(faces512: list[Path]) -> None:
    """At full scale (no resize) DALI's CPU decoder and simplejpeg agree within ±1 per channel."""
    paths = [str(p) for p in faces512]
    loader = dali_mod.DaliLoader(paths, 512, batch_size=4, workers=1, device="cpu")
    torch_loader = TorchLoader(paths, 512, batch_size=4, workers=0)
    for _ in range(2):
        batch = next(loader)
        assert batch["images"].shape == (4, 3, 512, 512) and batch["images"].dtype == torch.uint8
        indices = batch["indices"].tolist()
        reference = torch_loader.dataset.__getitems__(indices)["images"]
        diff = (batch["images"].int() - reference.int()).abs()
        assert int(diff.max()) <= 1


@needs_dali
@pytest.mark.parametrize("resolution", [128, 256])
def test_dali_cpu_at_working_resolution_matches_within_psnr(faces512: list[Path], resolution: int) -> None:
    paths = [str(p) for p in faces512]
    batch = next(dali_mod.DaliLoader(paths, resolution, batch_size=8, workers=1, device="cpu"))
    for image, index in zip(batch["images"], batch["indices"].tolist(), strict=True):
        ours = decode_bgr(Path(paths[index]).read_bytes(), resolution)
        assert psnr(image.permute(1, 2, 0).numpy(), ours) >= PSNR_BOUND_DB[resolution]


@needs_dali
def test_dali_shards_are_disjoint_and_cover(faceset) -> None:
    seen = []
    for rank in range(2):
        loader = dali_mod.DaliLoader(
            faceset.paths, 64, batch_size=3, rank=rank, world_size=2, workers=1, seed=4
        )
        first = next(loader)["indices"].tolist() + next(loader)["indices"].tolist()
        seen.append(first)
    # shards of 11 files: 6 and 5 (padded to 6 by repeating the shard's last file)
    assert set(seen[0]).isdisjoint(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(len(faceset)))


@needs_dali
def test_dali_resumes_exactly(faceset) -> None:
    loader = dali_mod.DaliLoader(faceset.paths, 64, batch_size=4, workers=1, seed=2)
    for _ in range(3):
        next(loader)
    state = loader.state_dict()
    expected = [next(loader)["indices"].tolist() for _ in range(3)]
    resumed = dali_mod.DaliLoader(faceset.paths, 64, batch_size=4, workers=1, seed=2)
    resumed.load_state_dict(state)
    assert [next(resumed)["indices"].tolist() for _ in range(3)] == expected


def test_backend_switch(faceset, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", "cpu") == "torch"
    loader = make_loader("torch", faceset, batch_size=2, workers=0)
    assert isinstance(loader, TorchLoader) and next(loader)["images"].shape == (2, 3, 64, 64)
    with pytest.raises(TorchSAEError, match="backend 'nope'"):
        resolve_backend("nope", "cpu")
    monkeypatch.setattr(dali_mod, "dali_available", lambda: False)
    with pytest.raises(TorchSAEError, match="DALI is not installed") as info:
        make_loader("dali", faceset, batch_size=2)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.warns(UserWarning, match="DALI is not installed"):  # the fallback is announced
        assert pipelines.resolve_backend("auto", "cuda") == "torch"  # no DALI: auto falls back to torch


@pytest.mark.parametrize(("n", "world"), [(1, 4), (2, 7), (3, 3), (5, 2)])
def test_tiny_facesets_give_every_rank_a_full_shard(n: int, world: int) -> None:
    """Fewer files than ranks: padding wraps cyclically, so no rank's shard is empty (no endless loop)."""
    from pipelines.torch_loader import ShardedStream

    seen = set()
    for rank in range(world):
        stream = ShardedStream(n, rank, world, seed=3)
        shard = stream.epoch_indices(0)
        assert len(shard) == stream.per_rank >= 1
        seen.update(shard.tolist())
        first = next(stream.batches(batch_size=4))
        assert len(first) == 4 and all(0 <= i < n for i in first)
    assert seen == set(range(n))
