"""The latent contract: ids, round trips and the one-line refusal of a mismatch."""

from __future__ import annotations

import pytest

from torchsae.modular.latent import LatentMismatchError, LatentSpec, check_compatible


def _spec(**changes) -> LatentSpec:
    base = {"space": "alice", "channels": 64, "size": 8, "resolution": 64, "face_type": "wf"}
    return LatentSpec(**{**base, **changes})


def test_round_trip_and_id() -> None:
    spec = _spec()
    assert spec.id == "alice:64x8x8:r64:wf:v1" and spec.shape == (64, 8, 8)
    assert LatentSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"space": "bob"}, "space"),
        ({"channels": 32}, "channels"),
        ({"size": 4}, "size"),
        ({"resolution": 128}, "resolution"),
        ({"face_type": "f"}, "face_type"),
    ],
)
def test_a_mismatch_is_refused_in_one_line(changes: dict, named: str) -> None:
    with pytest.raises(LatentMismatchError) as info:
        check_compatible(_spec(), _spec(**changes), "encoder alice", "decoder bob")
    message = str(info.value)
    assert "\n" not in message and named in message and "encoder alice" in message
    check_compatible(_spec(**changes), _spec(**changes), "a", "b")  # equal specs combine


def test_bad_specs_are_refused() -> None:
    with pytest.raises(LatentMismatchError, match="channels"):
        _spec(channels=0)
    with pytest.raises(LatentMismatchError, match="lacks size"):
        LatentSpec.from_dict({"space": "a", "channels": 1, "resolution": 64, "face_type": "wf"})
    tampered = {**_spec().to_dict(), "id": "alice:1x1x1:r64:wf:v1"}
    with pytest.raises(LatentMismatchError, match="does not match"):
        LatentSpec.from_dict(tampered)
    with pytest.raises(LatentMismatchError, match="newer"):
        LatentSpec.from_dict({**_spec().to_dict(), "version": 99, "id": None} | {"id": _spec(version=99).id})
